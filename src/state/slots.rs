//! The state file's format: two fixed-size slots, each a checksummed
//! record (`TKSTATE1 <seq:16 hex> <len:8 hex> <sum:16 hex>\n`, then the
//! JSON record, padded with newlines). Pure: bytes in, bytes out.

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"TKSTATE1";
/// `TKSTATE1 <seq:16 hex> <len:8 hex> <sum:16 hex>\n`
pub(super) const HEADER: usize = 8 + 1 + 16 + 1 + 8 + 1 + 16 + 1;
pub(super) const PAGE: usize = 4096;
/// Room a slot keeps for a record whose size is not known yet (the first
/// token of a chain): JWTs of a few KiB fit without growing the file.
pub(super) const MIN_ROOM: usize = 2000;

/// One slot's record: its sequence number and JSON.
pub(super) struct Slot {
    pub seq: u64,
    pub payload: Vec<u8>,
}

fn sum(seq: u64, payload: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update((payload.len() as u64).to_le_bytes());
    h.update(payload);
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

/// The bytes of a slot of `size` holding `payload` as record `seq`.
pub(super) fn encode_slot(seq: u64, payload: &[u8], size: usize) -> Vec<u8> {
    let mut out = format!(
        "TKSTATE1 {seq:016x} {:08x} {:016x}\n",
        payload.len(),
        sum(seq, payload)
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out.resize(size, b'\n');
    out
}

fn hex(bytes: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(bytes).ok()?, 16).ok()
}

/// The record in `slot`, if it is whole.
pub(super) fn decode_slot(slot: &[u8]) -> Option<Slot> {
    let header = slot.get(..HEADER)?;
    if &header[..8] != MAGIC || header[HEADER - 1] != b'\n' {
        return None;
    }
    let seq = hex(&header[9..25])?;
    let len = usize::try_from(hex(&header[26..34])?).ok()?;
    let expected = hex(&header[35..51])?;
    let payload = slot.get(HEADER..HEADER.checked_add(len)?)?;
    (sum(seq, payload) == expected).then(|| Slot {
        seq,
        payload: payload.to_vec(),
    })
}

/// A state file's image: its slot size, and the newest whole record and
/// which slot holds it.
pub(super) struct Image {
    pub slot_size: usize,
    pub newest: Option<(usize, Slot)>,
}

pub(super) fn decode(bytes: &[u8]) -> Image {
    let slot_size = bytes.len() / 2;
    let newest = if slot_size < HEADER {
        None
    } else {
        (0..2)
            .filter_map(|i| decode_slot(&bytes[i * slot_size..(i + 1) * slot_size]).map(|s| (i, s)))
            .max_by_key(|(_, s)| s.seq)
    };
    Image { slot_size, newest }
}

/// A slot size with room for a record of `len`.
pub(super) fn slot_size_for(len: usize) -> usize {
    (HEADER + len.max(MIN_ROOM) * 2).div_ceil(PAGE) * PAGE
}
