//! A bounded tail of a byte stream: keeps the last N bytes and counts the rest.

/// The last `cap` bytes written, and how many were dropped before them.
#[derive(Debug)]
pub(crate) struct Tail {
    cap: usize,
    buf: Vec<u8>,
    dropped: u64,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Self {
        Tail {
            cap,
            buf: Vec::new(),
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if self.cap == 0 {
            self.dropped += data.len() as u64;
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.cap.saturating_mul(2).max(4096) {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.dropped += cut as u64;
            self.buf.drain(..cut);
        }
    }

    /// The kept bytes as lossy UTF-8, prefixed with a note when bytes were dropped.
    pub(crate) fn into_string(mut self) -> String {
        self.trim();
        let text = String::from_utf8_lossy(&self.buf).into_owned();
        if self.dropped > 0 {
            format!("[... {} bytes dropped ...]\n{text}", self.dropped)
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tail;

    #[test]
    fn keeps_only_the_last_bytes() {
        let mut t = Tail::new(10);
        for _ in 0..1000 {
            t.push(b"0123456789abcdef");
        }
        let s = t.into_string();
        assert!(s.ends_with("6789abcdef"), "{s}");
        assert!(s.starts_with("[... 15990 bytes dropped ...]"), "{s}");
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut t = Tail::new(64);
        t.push(b"hello\n");
        assert_eq!(t.into_string(), "hello\n");
    }
}
