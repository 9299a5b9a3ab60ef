//! Little-endian encoding of section payloads, with bounds-checked decoding.

use super::StateError;

/// Builds a section payload.
#[derive(Default, Debug)]
pub struct Encoder(pub Vec<u8>);

impl Encoder {
    /// Appends a byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// Appends a u16.
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
}

/// Reads a section payload; every read names the section when the payload is too short.
pub struct Decoder<'a> {
    name: &'a str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder over the payload of section `name`.
    pub fn new(name: &'a str, buf: &'a [u8]) -> Self {
        Self { name, buf, pos: 0 }
    }

    /// The section's name (for error messages).
    pub fn name(&self) -> &str {
        self.name
    }

    /// An error about this section's content.
    pub fn invalid(&self, msg: impl Into<String>) -> StateError {
        StateError::Invalid { name: self.name.into(), msg: msg.into() }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let have = self.buf.len() - self.pos;
        let s = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end)).ok_or_else(|| {
            StateError::Truncated { what: format!("section `{}`", self.name), need: n, at: self.pos, have }
        })?;
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A bool (a byte that must be 0 or 1).
    pub fn bool(&mut self) -> Result<bool, StateError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.invalid(format!("boolean byte {v} at offset {}", self.pos - 1))),
        }
    }
    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], StateError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(self.invalid(format!("byte string of {n} bytes, at most {max} expected")));
        }
        self.take(n)
    }
    /// Fails if bytes are left over.
    pub fn finish(&self) -> Result<(), StateError> {
        if self.pos != self.buf.len() {
            return Err(
                self.invalid(format!("{} unexpected bytes after the payload", self.buf.len() - self.pos))
            );
        }
        Ok(())
    }
}
