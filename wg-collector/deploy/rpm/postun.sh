# %postun: after an upgrade ($1 >= 1) restart the service if it runs (the pinned maps keep the
# counts); after an erase only forget the unit.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart wg-collector.service >/dev/null 2>&1 || :
    fi
fi
