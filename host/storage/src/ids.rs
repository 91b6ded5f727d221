//! The shapes of the ids every engine hands out (ETags, message ids, pop receipts, lease ids),
//! made from a unique sequence number and the database's salt. An engine only has to supply
//! sequence numbers that never repeat; the text is the same whichever engine made it.

/// SplitMix64's finaliser: a bijection on u64, so distinct sequence numbers stay distinct.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An opaque quoted ETag in Azure's blob format (`"0x8D…"`).
pub fn etag(seq: u64, salt: u64) -> String {
    format!("\"0x8D{:016X}\"", mix(seq ^ salt))
}

/// A weak ETag for table entities (`W/"0x…"`).
pub fn weak_etag(seq: u64, salt: u64) -> String {
    format!("W/\"0x{:016X}\"", mix(seq ^ salt))
}

/// A GUID-shaped id whose low 64 bits are the sequence number (message ids use this to find
/// the message again without a second index; [`seq_from_guid`] reads it back).
pub fn guid(seq: u64, salt: u64) -> String {
    let hi = mix(seq ^ salt);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        seq >> 48,
        seq & 0xffff_ffff_ffff
    )
}

/// An opaque pop receipt.
pub fn receipt(seq: u64, salt: u64) -> String {
    format!("AgAAAAMAAAAAAAAA{:016x}", mix(seq ^ salt.rotate_left(17)))
}

/// Recovers the sequence number from an id made by [`guid`]; `None` for any other text.
pub fn seq_from_guid(id: &str) -> Option<u64> {
    let mut parts = id.split('-');
    let (_, _, _, g4, g5) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || g4.len() != 4 || g5.len() != 12 {
        return None;
    }
    let hi = u64::from_str_radix(g4, 16).ok()?;
    let lo = u64::from_str_radix(g5, 16).ok()?;
    Some((hi << 48) | lo)
}
