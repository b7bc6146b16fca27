//! A Kafka request frame (without its length prefix), decoded exactly as the broker's Kafka
//! listener decodes it: header, version checks, then the body with `kafka-protocol` (the same
//! patched copy as the broker's, which bounds capacities taken from counts on the wire), so a
//! hostile array length is measured against what the broker really does with it.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strand_broker::kafka::decode_request_frame(Bytes::copy_from_slice(data));
});
