//! A page in the format a scraper asked for: each group of families encoded (and gzipped,
//! if asked) on a thread of its own, the pieces joined in the catalogue's order. At 10k
//! peers and more the encoding is most of a scrape, and prometheus-client encodes one
//! registry on one thread.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use bytes::Bytes;
use prometheus_client::{collector::Collector, encoding, encoding::DescriptorEncoder, registry::Registry};

use super::{family::Group, Page, GROUPS};
use crate::gzip;

/// The format a scraper asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    pub openmetrics: bool,
    pub gzip: bool,
}

/// The size of each group's last text, so the next one is encoded into a buffer that need
/// not grow.
static LAST_SIZE: [AtomicUsize; GROUPS.len()] = [const { AtomicUsize::new(16 * 1024) }; GROUPS.len()];

/// One group of one page, as a Collector for a registry of its own.
#[derive(Debug)]
struct GroupOf {
    page: Arc<Page>,
    group: usize,
}

impl Collector for GroupOf {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Group { families, .. } = &GROUPS[self.group];
        families.iter().try_for_each(|f| f.encode(&self.page, &mut enc))
    }
}

/// One group's text, and its gzip piece if asked for; `last` ends the page.
fn encode_group(
    page: Arc<Page>,
    group: usize,
    format: Format,
) -> Result<(String, Option<gzip::Piece>), std::fmt::Error> {
    let last = group == GROUPS.len() - 1;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GroupOf { page, group }));
    let mut text = String::with_capacity(LAST_SIZE[group].load(Ordering::Relaxed) * 9 / 8);
    if format.openmetrics {
        encoding::text::encode_registry(&mut text, &registry)?;
        if last {
            encoding::text::encode_eof(&mut text)?;
        }
    } else {
        encoding::prometheus_text::encode(&mut text, &registry)?;
    }
    LAST_SIZE[group].store(text.len(), Ordering::Relaxed);
    let piece =
        if format.gzip { Some(gzip::deflate(text.as_bytes(), last).map_err(|_| std::fmt::Error)?) } else { None };
    Ok((text, piece))
}

/// The whole page.
pub fn encode(page: Page, format: Format) -> Result<Bytes, std::fmt::Error> {
    let page = Arc::new(page);
    let parts = std::thread::scope(|scope| {
        let threads: Vec<_> = (1..GROUPS.len())
            .map(|g| (g, page.clone()))
            .map(|(g, p)| scope.spawn(move || encode_group(p, g, format)))
            .collect();
        let first = encode_group(page.clone(), 0, format);
        std::iter::once(first)
            .chain(threads.into_iter().map(|t| t.join().map_err(|_| std::fmt::Error)?))
            .collect::<Result<Vec<_>, _>>()
    })?;
    if format.gzip {
        return Ok(Bytes::from(gzip::member(parts.into_iter().filter_map(|(_, piece)| piece).collect())));
    }
    let mut body = String::with_capacity(parts.iter().map(|(t, _)| t.len()).sum());
    for (text, _) in parts {
        body.push_str(&text);
    }
    Ok(Bytes::from(body))
}
