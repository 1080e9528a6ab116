//! Counting gRPC messages on a streaming body without buffering it: each message is a 5-byte
//! prefix (a flags byte, then a 4-byte big-endian length) and its payload, and a message may
//! start, or its prefix be split, anywhere across body chunks. Only the position in the
//! current message is kept; payload bytes are skipped a chunk at a time.
//! https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md (Length-Prefixed-Message)

/// Where the next byte falls in the current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Position {
    /// At a message's flags byte.
    #[default]
    Flags,
    /// In the length, this many of its 4 bytes read.
    Length(u8),
    /// In the payload, this many bytes left.
    Payload(u32),
}

/// The message count of one direction of a call.
#[derive(Debug, Clone, Default)]
pub struct FrameCounter {
    position: Position,
    length: [u8; 4],
    count: u64,
}

impl FrameCounter {
    /// Reads the next chunk of the body; returns the number of messages that started in it.
    /// A message counts from its flags byte, as Envoy's frame inspector counts: a call cut
    /// short mid-message has still sent that message.
    pub fn inspect(&mut self, mut data: &[u8]) -> u64 {
        let before = self.count;
        while let Some((&byte, rest)) = data.split_first() {
            match self.position {
                Position::Flags => {
                    self.count += 1;
                    self.position = Position::Length(0);
                    data = rest;
                }
                Position::Length(read) => {
                    self.length[usize::from(read)] = byte;
                    data = rest;
                    self.position = if read < 3 {
                        Position::Length(read + 1)
                    } else {
                        match u32::from_be_bytes(self.length) {
                            0 => Position::Flags,
                            n => Position::Payload(n),
                        }
                    };
                }
                Position::Payload(left) => {
                    // Whole payload bytes are skipped at once: no per-byte work on the data.
                    let skip = data.len().min(left as usize);
                    data = &data[skip..];
                    let left = left - skip as u32;
                    self.position = if left == 0 {
                        Position::Flags
                    } else {
                        Position::Payload(left)
                    };
                }
            }
        }
        self.count - before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn stream() -> Vec<u8> {
        [
            message(b"hello"),
            message(b""),
            message(&[7u8; 300]),
            message(b"x"),
        ]
        .concat()
    }

    #[test]
    fn counts_messages_in_one_chunk() {
        let mut c = FrameCounter::default();
        assert_eq!(c.inspect(&stream()), 4);
        assert_eq!(c.count, 4);
    }

    #[test]
    fn every_split_point_gives_the_same_count() {
        let bytes = stream();
        for split in 0..=bytes.len() {
            let mut c = FrameCounter::default();
            let (a, b) = bytes.split_at(split);
            let total = c.inspect(a) + c.inspect(b);
            assert_eq!(total, 4, "split at {split}");
        }
    }

    #[test]
    fn a_byte_at_a_time_splits_every_prefix() {
        let mut c = FrameCounter::default();
        let deltas: Vec<u64> = stream().iter().map(|b| c.inspect(&[*b])).collect();
        assert_eq!(deltas.iter().sum::<u64>(), 4);
        // Each message counts at its flags byte.
        assert_eq!(deltas[0], 1);
        assert_eq!(deltas[1..10].iter().sum::<u64>(), 0);
        assert_eq!(deltas[10], 1);
    }

    #[test]
    fn a_message_counts_from_its_first_byte() {
        let mut c = FrameCounter::default();
        assert_eq!(c.inspect(&message(b"abc")[..1]), 1);
        assert_eq!(c.inspect(&[]), 0);
    }
}
