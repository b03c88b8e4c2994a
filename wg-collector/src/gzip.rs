//! One gzip member (RFC 1952) made of pieces compressed apart, as pigz does: each piece is
//! raw deflate ending on a byte boundary (a sync flush; the last one finished), so the
//! pieces simply follow each other, and their CRC-32s combine into the member's. The halves
//! of a page compress on the threads that encoded them: at 10k peers gzip takes as long as
//! the encoding.

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// A piece of the member: its deflate blocks and the checksum of what they hold.
pub struct Piece {
    deflated: Vec<u8>,
    crc: Crc,
}

/// Compresses `text` at the fastest level (most of gzip's gain on a page of repeated label
/// sets, at a fraction of the default level's time); `last` ends the deflate stream.
pub fn deflate(text: &[u8], last: bool) -> std::io::Result<Piece> {
    deflate_all(&[text], last)
}

/// Compresses `texts`, one after the other, into one piece (one deflate state: each costs
/// some 300 KB to set up, so a page's many small texts share one).
pub fn deflate_all(texts: &[&[u8]], last: bool) -> std::io::Result<Piece> {
    let mut z = Compress::new(Compression::fast(), false);
    let total: usize = texts.iter().map(|t| t.len()).sum();
    let mut out = Vec::with_capacity(total / 4 + 1024);
    let mut crc = Crc::new();
    for (i, text) in texts.iter().enumerate() {
        let flush = match (i + 1 == texts.len(), last) {
            (false, _) => FlushCompress::None,
            (true, true) => FlushCompress::Finish,
            (true, false) => FlushCompress::Sync,
        };
        let start = z.total_in() as usize;
        loop {
            let consumed = z.total_in() as usize - start;
            let status = z.compress_vec(&text[consumed..], &mut out, flush).map_err(std::io::Error::other)?;
            let done = z.total_in() as usize - start == text.len() && out.len() < out.capacity();
            if status == Status::StreamEnd || (flush != FlushCompress::Finish && done) {
                break;
            }
            out.reserve(out.capacity().max(1024));
        }
        crc.update(text);
    }
    if texts.is_empty() {
        // Still a valid piece: an empty sync-flushed or finished stream.
        return deflate_all(&[&[]], last);
    }
    Ok(Piece { deflated: out, crc })
}

/// The member: header, the pieces in order (the last one made with `last`), trailer.
pub fn member(pieces: Vec<Piece>) -> Vec<u8> {
    // No name, no time, no flags; OS unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut out = Vec::with_capacity(HEADER.len() + pieces.iter().map(|p| p.deflated.len()).sum::<usize>() + 8);
    out.extend_from_slice(&HEADER);
    let mut crc = Crc::new();
    for p in pieces {
        out.extend_from_slice(&p.deflated);
        crc.combine(&p.crc);
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the length modulo 2^32.
    out.extend_from_slice(&crc.amount().to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Pieces of every size, down to empty ones, read back as one gzip stream by a decoder
    /// that stops after the first member (so it must be one).
    #[test]
    fn pieces_make_one_member_that_decodes_to_the_whole() {
        let text: String = (0..20_000)
            .map(|i| format!("wireguard_peer_receive_bytes_total{{public_key=\"{i:x}\"}} {}\n", i * 7))
            .collect();
        for cut in [0, 1, 100, text.len() / 2, text.len()] {
            let (a, b) = text.as_bytes().split_at(cut);
            let gz = member(vec![deflate(a, false).unwrap(), deflate(b, true).unwrap()]);
            let mut back = String::new();
            flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut back).unwrap();
            assert!(back == text, "cut at {cut}: {} bytes back of {}", back.len(), text.len());
            assert!(gz.len() * 3 < text.len(), "compressed to {}", gz.len());
        }
    }

    /// Several texts through one deflate state, in pieces, read back as the whole.
    #[test]
    fn many_texts_in_a_piece_decode_to_the_whole() {
        let parts: Vec<String> = (0..50).map(|i| format!("family_{i} {}\n", "x".repeat(i * 37))).collect();
        let texts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        let gz = member(vec![deflate_all(&texts[..20], false).unwrap(), deflate_all(&texts[20..], true).unwrap()]);
        let mut back = String::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut back).unwrap();
        assert_eq!(back, parts.concat());
    }
}
