//! Which shard a device's events belong to, in cluster mode: Kafka's own
//! partitioner for keyed messages (murmur2 of the key, as Java clients and
//! librdkafka's `murmur2_random` compute it), modulo the number of shards.
//! A device always falls in one shard, so the shards hold disjoint sets of
//! devices; and a topic whose partition count divides the number of shards,
//! fed by producers that key by `device_id` with that partitioner, sends
//! each shard's devices through one partition (`shard % partitions`).

/// Kafka's murmur2 hash of `data` (`org.apache.kafka.common.utils.Utils`).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The shard of `device_id` among `shards` (at least 1): the partition
/// Kafka's partitioner picks for the key `device_id` in a topic of
/// `shards` partitions.
pub fn shard_of(device_id: &str, shards: u32) -> u32 {
    (murmur2(device_id.as_bytes()) & 0x7fff_ffff) as u32 % shards.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of Kafka's own test of its murmur2 (`UtilsTest`).
    #[test]
    fn murmur2_is_kafkas() {
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "{key}");
        }
    }

    #[test]
    fn a_device_keeps_its_shard_and_shards_nest() {
        for i in 0..1000 {
            let d = format!("device-{i}");
            let s = shard_of(&d, 12);
            assert!(s < 12);
            assert_eq!(s, shard_of(&d, 12));
            // A topic of 6 partitions carries shard s through partition s % 6.
            assert_eq!(s % 6, shard_of(&d, 6));
        }
    }
}
