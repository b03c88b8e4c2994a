# %preun: on erase ($1 = 0, not an upgrade) stop and disable the service, then detach the
# programs and remove their pins, which would otherwise go on counting with nothing to read them.
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl --no-reload disable --now wg-collector.service >/dev/null 2>&1 || :
    fi
    /usr/bin/wg-collector --bpf.unpin >/dev/null 2>&1 || :
fi
