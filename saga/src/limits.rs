//! Size limits on what a saga carries, checked where it comes in (the API, a participant's
//! answer) so nothing reaches the journal that the broker would refuse: a journal record the
//! broker refuses stops the orchestrator, and it would fail the same way after every restart.
//!
//! The journal records whose size the outside decides are `Started` (the input and the
//! idempotency key) and a step's success (the participant's answer); everything else in an
//! entry is ids, names and errors cut to a few hundred bytes. [`SizeLimits::check_record_limit`]
//! checks at start that the worst case of those fits the broker's record limit.

use crate::api::StartRequest;

/// Room in one journal record for everything but the input, key and output: saga and step
/// ids, names, timestamps, the epoch, an error message (participants' errors are cut to 500
/// characters), the JSON around them and the record's own framing.
pub const ENTRY_OVERHEAD_BYTES: usize = 16 * 1024;

/// The limits (`strand-saga --saga-input-bytes-max` and the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// A saga's input, as compact JSON.
    pub input_bytes_max: usize,
    /// An idempotency key.
    pub idempotency_key_bytes_max: usize,
    /// A definition as submitted (`PUT /definitions/{name}` body).
    pub definition_bytes_max: usize,
    /// A participant's answer (the step's output), as compact JSON.
    pub output_bytes_max: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        SizeLimits {
            input_bytes_max: 256 * 1024,
            idempotency_key_bytes_max: 512,
            definition_bytes_max: 256 * 1024,
            output_bytes_max: 256 * 1024,
        }
    }
}

/// A limit a request went over: 413 for a body part too large, 400 for a key too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub status: u16,
    pub message: String,
}

impl SizeLimits {
    /// Checks a start request's input and idempotency key.
    pub fn check_start(&self, request: &StartRequest) -> Result<(), OverLimit> {
        if let Some(key) = &request.idempotency_key {
            if key.len() > self.idempotency_key_bytes_max {
                return Err(OverLimit {
                    status: 400,
                    message: format!(
                        "the idempotency key is {} bytes, more than the limit of {} \
                         (--idempotency-key-bytes-max)",
                        key.len(),
                        self.idempotency_key_bytes_max
                    ),
                });
            }
        }
        let input = json_len(&request.input);
        if input > self.input_bytes_max {
            return Err(OverLimit {
                status: 413,
                message: format!(
                    "the saga input is {input} bytes as JSON, more than the limit of {} \
                     (--saga-input-bytes-max)",
                    self.input_bytes_max
                ),
            });
        }
        Ok(())
    }

    /// Checks a definition's size as submitted.
    pub fn check_definition(&self, bytes: usize) -> Result<(), OverLimit> {
        if bytes > self.definition_bytes_max {
            return Err(OverLimit {
                status: 413,
                message: format!(
                    "the definition is {bytes} bytes, more than the limit of {} \
                     (--definition-bytes-max)",
                    self.definition_bytes_max
                ),
            });
        }
        Ok(())
    }

    /// A participant's answer over the limit: the error that fails its step, permanently (the
    /// same call would answer the same).
    pub fn check_output(&self, output: &serde_json::Value) -> Result<(), String> {
        let bytes = json_len(output);
        if bytes > self.output_bytes_max {
            return Err(format!(
                "the participant's answer is {bytes} bytes as JSON, more than the limit of {} \
                 (--participant-output-bytes-max)",
                self.output_bytes_max
            ));
        }
        Ok(())
    }

    /// The largest journal entry these limits allow.
    pub fn journal_entry_bytes_max(&self) -> usize {
        let started = self.input_bytes_max + self.idempotency_key_bytes_max;
        started.max(self.output_bytes_max) + ENTRY_OVERHEAD_BYTES
    }

    /// Checks that the largest journal entry fits in `record_bytes_max`, the broker's limit
    /// on one record (Kafka's `max.message.bytes`, a Strand broker's batch limit): a
    /// configuration error otherwise.
    pub fn check_record_limit(&self, record_bytes_max: usize) -> Result<(), String> {
        let worst = self.journal_entry_bytes_max();
        if worst > record_bytes_max {
            return Err(format!(
                "with these size limits a journal record can be {worst} bytes (input {} + \
                 idempotency key {}, or a participant answer of {}, plus {ENTRY_OVERHEAD_BYTES} \
                 for the rest), more than the broker's record limit of {record_bytes_max} \
                 (--journal-record-bytes-max): lower --saga-input-bytes-max or \
                 --participant-output-bytes-max, or raise the broker's limit",
                self.input_bytes_max, self.idempotency_key_bytes_max, self.output_bytes_max
            ));
        }
        Ok(())
    }
}

/// The length of `value` as compact JSON, without building the text.
pub fn json_len(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn start(input: serde_json::Value, key: Option<&str>) -> StartRequest {
        StartRequest {
            definition: "order".into(),
            version: None,
            input,
            idempotency_key: key.map(str::to_string),
        }
    }

    #[test]
    fn each_limit_names_itself_and_its_flag() {
        let limits = SizeLimits {
            input_bytes_max: 100,
            idempotency_key_bytes_max: 8,
            definition_bytes_max: 1000,
            output_bytes_max: 50,
        };
        assert_eq!(
            limits.check_start(&start(json!({"a": 1}), Some("k-1"))),
            Ok(())
        );
        let big = start(json!({"a": "x".repeat(100)}), None);
        let e = limits.check_start(&big).unwrap_err();
        assert_eq!(e.status, 413);
        assert!(
            e.message.contains("--saga-input-bytes-max"),
            "{}",
            e.message
        );
        let e = limits
            .check_start(&start(json!({}), Some("123456789")))
            .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message.contains("idempotency key is 9 bytes"),
            "{}",
            e.message
        );
        assert_eq!(limits.check_definition(1000), Ok(()));
        assert_eq!(limits.check_definition(1001).unwrap_err().status, 413);
        assert!(limits.check_output(&json!({"id": 1})).is_ok());
        let e = limits.check_output(&json!("y".repeat(60))).unwrap_err();
        assert!(e.contains("--participant-output-bytes-max"), "{e}");
    }

    #[test]
    fn the_worst_journal_record_is_checked_against_the_brokers_limit() {
        let limits = SizeLimits::default();
        // The defaults fit the default record limit of Kafka and of a Strand broker (1 MiB).
        assert_eq!(limits.check_record_limit(1 << 20), Ok(()));
        let worst = limits.journal_entry_bytes_max();
        assert_eq!(
            worst,
            256 * 1024 + 512 + ENTRY_OVERHEAD_BYTES,
            "the input and key are the larger part"
        );
        let e = limits.check_record_limit(worst - 1).unwrap_err();
        assert!(e.contains("--journal-record-bytes-max"), "{e}");
        let big_output = SizeLimits {
            output_bytes_max: 2 << 20,
            ..limits
        };
        assert!(big_output.check_record_limit(1 << 20).is_err());
    }

    #[test]
    fn json_len_is_the_compact_length() {
        let v = json!({"a": [1, "two", null], "b": {"c": true}});
        assert_eq!(json_len(&v), serde_json::to_vec(&v).unwrap().len());
    }
}
