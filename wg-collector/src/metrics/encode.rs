//! A page in the format a scraper asked for: its families encoded by a few threads that take
//! the next family as they finish one, the pieces joined in the catalogue's order, then
//! gzipped or zstd-compressed if asked. At 10k peers and more the encoding is most of a scrape, and
//! prometheus-client encodes one registry on one thread; taking families as they come keeps
//! the threads evenly busy whatever a page holds.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use prometheus_client::{collector::Collector, encoding, encoding::DescriptorEncoder, registry::Registry};

use super::{
    buffers::Slots,
    family::Family,
    format::{Encoding, Exposition, Format},
    Page, GROUPS,
};
use crate::gzip;

/// How many families the catalogue has.
const FAMILIES: usize = {
    let (mut n, mut g) = (0, 0);
    while g < GROUPS.len() {
        n += GROUPS[g].families.len();
        g += 1;
    }
    n
};

/// The size of each family's last encoding, so the next one is encoded into a buffer that need
/// not grow.
static LAST_SIZE: [AtomicUsize; FAMILIES] = [const { AtomicUsize::new(256) }; FAMILIES];

/// Each family's buffer, kept for the next page (text formats).
static BUFFERS: Slots<FAMILIES> = Slots::new();

/// Threads encoding one page (the first is the scrape's own).
const THREADS: usize = 4;

/// One family of one page, as a Collector for a registry of its own.
#[derive(Debug)]
struct FamilyOf {
    page: Arc<Page>,
    family: &'static Family,
    native: bool,
    /// Its descriptor alone: the page writes the samples (lines.rs).
    described: bool,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for FamilyOf {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        if self.described {
            return self.family.describe(&self.page, &mut enc);
        }
        self.family.encode(&self.page, &mut enc, self.native)
    }
}

/// One family in the page's format; `last` ends the page. `lines`: a text page's counters
/// and gauges are written by lines.rs, not prometheus-client (false: by it, for the tests
/// that compare the two).
fn encode_family(
    page: &Arc<Page>,
    i: usize,
    family: &'static Family,
    format: Format,
    lines: bool,
) -> Result<Bytes, std::fmt::Error> {
    let last = i == FAMILIES - 1;
    let native = format.exposition == Exposition::Protobuf;
    let described = lines && !native && family.has_lines();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(FamilyOf { page: page.clone(), family, native, described }));
    // After prometheus-client's HELP and TYPE: the samples, where the page writes them.
    let samples = |text: &mut String| if described { family.write_lines(page, text) } else { Ok(()) };
    let capacity = LAST_SIZE[i].load(Ordering::Relaxed) * 9 / 8;
    let text = || String::from_utf8(BUFFERS.take(i, capacity)).map_err(|_| std::fmt::Error);
    let out = match format.exposition {
        Exposition::Protobuf => {
            Bytes::from(encoding::prometheus_protobuf::encode_to_vec(&registry).map_err(|_| std::fmt::Error)?)
        }
        Exposition::OpenMetrics => {
            let mut text = text()?;
            encoding::text::encode_registry(&mut text, &registry)?;
            samples(&mut text)?;
            if last {
                encoding::text::encode_eof(&mut text)?;
            }
            BUFFERS.bytes(i, text.into_bytes())
        }
        Exposition::Text => {
            let mut text = text()?;
            encoding::prometheus_text::encode(&mut text, &registry)?;
            samples(&mut text)?;
            BUFFERS.bytes(i, text.into_bytes())
        }
    };
    LAST_SIZE[i].store(out.len(), Ordering::Relaxed);
    Ok(out)
}

/// `f` of every item, by `threads` threads (the first is this one) that each take the next
/// item as they finish one; the results in the items' order.
fn shared_out<I: Sync, T: Send>(
    items: &[I],
    threads: usize,
    f: impl Fn(usize, &I) -> Result<T, std::fmt::Error> + Sync,
) -> Result<Vec<T>, std::fmt::Error> {
    let next = AtomicUsize::new(0);
    let work = || -> Result<Vec<(usize, T)>, std::fmt::Error> {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { return Ok(done) };
            done.push((i, f(i, item)?));
        }
    };
    let mut all = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work()?;
        for t in others {
            all.extend(t.join().map_err(|_| std::fmt::Error)??);
        }
        Ok::<_, std::fmt::Error>(all)
    })?;
    all.sort_unstable_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, t)| t).collect())
}

/// The pieces gzipped as one member: cut into `threads` runs of about equal size, in order,
/// each compressed by a thread of its own.
fn gzip_pieces(texts: &[Bytes], threads: usize) -> Result<Bytes, std::fmt::Error> {
    let total: usize = texts.iter().map(Bytes::len).sum();
    let mut runs: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut size = 0;
    for t in texts {
        if size >= total.div_ceil(threads) * runs.len() && runs.len() < threads {
            runs.push(Vec::new());
        }
        size += t.len();
        runs.last_mut().expect("one run at least").push(t);
    }
    let count = runs.len();
    let pieces =
        shared_out(&runs, threads, |r, run| gzip::deflate_all(run, r + 1 == count).map_err(|_| std::fmt::Error))?;
    Ok(Bytes::from(gzip::member(pieces)))
}

/// zstd's level: 3 (its default) finds a peer's key again a family later; 1 mostly does not
/// (a synthetic 10k-peer page: 11 % of its size at level 3, 25 % at 1; 33 % gzipped), at
/// about the same speed.
const ZSTD_LEVEL: i32 = 3;

/// zstd's window: 8 MiB. A family of 10,000 peers is ~1.1 MB, so each key is found in the
/// family before (wireguard-go's 10k-peer page, host: 5 % of its size with 8 MiB, 8 % with
/// 2 MiB; gzipped 38 %, in more time). At 50,000 peers (5.5 MB a family) level 3's match
/// finder loses most of them (28 %). The memory is the window's, per worker, while it runs.
const ZSTD_WINDOW_LOG: u32 = 23;

/// The pieces as one zstd frame, compressed by `threads` workers.
fn zstd_pieces(texts: &[Bytes], threads: usize) -> std::io::Result<Bytes> {
    let total: usize = texts.iter().map(Bytes::len).sum();
    let mut z = zstd::stream::Encoder::new(Vec::with_capacity(total / 8 + 1024), ZSTD_LEVEL)?;
    z.window_log(ZSTD_WINDOW_LOG)?;
    z.include_contentsize(false)?;
    if threads > 1 {
        z.multithread(threads as u32)?;
    }
    for t in texts {
        std::io::Write::write_all(&mut z, t)?;
    }
    Ok(Bytes::from(z.finish()?))
}

/// An encoded page: its pieces in order, sent as they are (joining them would copy the whole
/// page once more: 13 MB at 10k peers).
#[derive(Clone, Debug, Default)]
pub struct Encoded(pub Vec<Bytes>);

impl Encoded {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page in one piece (for tests).
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.concat()
    }
}

/// The whole page.
pub fn encode(page: Page, format: Format) -> Result<Encoded, std::fmt::Error> {
    encode_with(page, format, true)
}

/// The whole page; `lines` as encode_family takes it.
pub(super) fn encode_with(mut page: Page, format: Format, lines: bool) -> Result<Encoded, std::fmt::Error> {
    if format.exposition != Exposition::Protobuf {
        page.for_text();
    }
    let page = Arc::new(page);
    let families: Vec<&'static Family> = super::families().collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, THREADS);
    let texts = shared_out(&families, threads, |i, f| encode_family(&page, i, f, format, lines))?;
    match format.encoding {
        Encoding::Identity => Ok(Encoded(texts)),
        Encoding::Gzip => Ok(Encoded(vec![gzip_pieces(&texts, threads)?])),
        Encoding::Zstd => Ok(Encoded(vec![zstd_pieces(&texts, threads).map_err(|_| std::fmt::Error)?])),
    }
}
