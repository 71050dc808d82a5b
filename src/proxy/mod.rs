//! The PROXY protocol, both ways.
//!
//! [`read`] is a sans-IO reader over `ppp`: it looks at the bytes a listed
//! proxy has sent so far and says "incomplete", "here is the header and its
//! length", or why the bytes are not a valid header. [`write`] builds the
//! header doorman sends to its backends.
//!
//! It is sans-IO (the reader) and byte-building (the writer): no socket, no
//! log line.

pub mod read;
pub mod write;

use std::net::SocketAddr;

pub use doorman_gate_api::Tlv;
pub use read::{parse, starts_like_header, Parsed, Prefix};

/// The most bytes a v1 line may take, CRLF included (proxy-protocol.txt 2.1).
pub const V1_MAX_LEN: usize = 107;

/// The most bytes doorman accepts for a whole v2 header (16 fixed bytes,
/// addresses and TLVs). Large enough for HAProxy's SSL TLVs with a client
/// certificate; a header that claims more is refused at once.
pub const V2_MAX_LEN: usize = 4096;

/// A complete, valid header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: the real client and the address it connected to.
    /// Both are canonical: `::ffff:a.b.c.d` is given as IPv4.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// Where the client connected (the proxy's frontend).
        destination: SocketAddr,
        /// v2 TLVs, in the order sent; empty for v1.
        tlvs: Vec<Tlv>,
    },
    /// A v2 `LOCAL` header: the proxy's own connection, a health check.
    Local,
}

/// Why bytes from a listed proxy are not an acceptable header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes start like neither a v1 nor a v2 header.
    #[error("bad or missing protocol header")]
    NotAHeader,
    /// No CRLF within the first 107 bytes of a v1 line.
    #[error("v1 header longer than 107 bytes")]
    V1TooLong,
    /// A v1 line ended in a lone LF, or held a CR or a control byte.
    #[error("bad v1 header terminator or control byte")]
    V1BadBytes,
    /// A v1 `UNKNOWN` line: refused, because it would hide the client from
    /// address-based checks (as postscreen and Haraka refuse it).
    #[error("v1 UNKNOWN protocol refused")]
    V1Unknown,
    /// A v1 line that does not follow the grammar.
    #[error("malformed v1 header: {0}")]
    V1Malformed(String),
    /// The v2 version nibble is not 2.
    #[error("unsupported v2 version {0:#x}")]
    V2Version(u8),
    /// The v2 length names more bytes than doorman accepts.
    #[error("v2 header of {0} bytes is longer than {max}", max = V2_MAX_LEN)]
    V2TooLong(usize),
    /// A v2 command other than LOCAL and PROXY.
    #[error("bad command {0:#x} in v2 header")]
    V2Command(u8),
    /// A v2 PROXY header for something other than TCP over IPv4 or IPv6,
    /// or any v2 header (LOCAL too) whose family or transport nibble the
    /// spec does not define.
    #[error("unsupported network protocol {0:#04x} in v2 header")]
    V2Family(u8),
    /// A v2 header whose length, addresses or TLVs do not add up.
    #[error("malformed v2 header: {0}")]
    V2Malformed(String),
    /// The v2 CRC32C TLV does not match the header.
    #[error("v2 header CRC32C mismatch")]
    V2Checksum,
}
