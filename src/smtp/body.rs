//! The sans-IO framer of a DATA body on its way from the client to the
//! backend smtpd: bytes in, bytes out, no socket and no deadline; a few bytes
//! of state whatever the size of the body; the output does not depend on how
//! the input is split.
//!
//! Why: SMTP smuggling (CVE-2023-51764). The end of DATA is
//! `<CR><LF>.<CR><LF>` and nothing else (the DATA line's own CRLF counts as
//! the CRLF before a first-line `.`), but some backends also end DATA at
//! `<LF>.<LF>`, `<LF>.<CR><LF>`, `<CR><LF>.<CR>`, `<CR>.<CR><LF>` or
//! `<CR>.<CR>` (Postfix 3.7 at `<LF>.<CR><LF>`): a body relayed as it is could
//! smuggle a second message past doorman. [`DataFramer`] finds the real end
//! and makes sure the backend never sees another one, by one of two policies
//! ([`BareNewline`], as Postfix's `smtpd_forbid_bare_newline`):
//!
//! - `Normalize`: every bare LF (not after a CR) and every bare CR (not before
//!   an LF) is a line end and goes out as CRLF. A line that is exactly `.` but
//!   is not both after a CRLF and ended by a CRLF, as the client sent them, is
//!   not the end: it goes out dot-stuffed as `..\r\n`. All else passes byte
//!   for byte, the client's own dot-stuffing and NUL bytes included.
//! - `Reject`: the output stops right before the first bare CR or LF; the rest
//!   of the body is read and dropped up to the real end, reported as
//!   [`Framed::Rejected`].

use bytes::{Buf, BytesMut};

/// What a bare CR or LF in a DATA body gets.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    serde::Deserialize,
    serde::Serialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// It becomes CRLF; a lone `.` line that is not the end is dot-stuffed.
    #[default]
    Normalize,
    /// The message is rejected: nothing more is output, the end is awaited.
    Reject,
}

/// Where a body is after a call to [`DataFramer::feed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// All input was consumed; the body goes on.
    More,
    /// The end of DATA was consumed; the output (all calls, after the DATA
    /// line's CRLF) ends with `\r\n.\r\n`; bytes after the end stay in the input.
    End,
    /// The end of DATA was consumed, but the body had a bare CR or LF under
    /// `Reject`: the output stopped at the first one, and no end was output.
    /// The bytes after the end stay in the input.
    Rejected,
}

/// Where the framer is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At the start of a line; `crlf`: the line before ended in a real CRLF.
    LineStart { crlf: bool },
    /// Inside a line that is not a lone `.`.
    Text,
    /// Right after a CR that ends a line not a lone `.` (CR not output yet).
    Cr,
    /// The line so far is `.` (already output).
    Dot { crlf: bool },
    /// The line so far is `.` and a CR (the CR not output yet).
    DotCr { crlf: bool },
    /// The end was consumed.
    Done,
}

/// Frames one DATA body (sans-IO).
#[derive(Clone, Debug)]
pub struct DataFramer {
    policy: BareNewline,
    state: State,
    bare: bool,
    consumed: u64,
}

impl DataFramer {
    /// A framer right after the DATA command's CRLF (its 354 reply).
    pub fn new(policy: BareNewline) -> Self {
        Self {
            policy,
            state: State::LineStart { crlf: true },
            bare: false,
            consumed: 0,
        }
    }

    /// Takes bytes off the front of `input` (consumed bytes are removed with
    /// `advance`; bytes after the end stay), appends what the backend is to
    /// get to `out`. After the end, it consumes nothing and says the same.
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Framed {
        let buf: &[u8] = input;
        // `i`: next byte to look at; `v`: start of the bytes yet to be copied
        // as they are. A CR is never copied before the byte after it is seen.
        let (mut i, mut v) = (0, 0);
        while i < buf.len() && self.state != State::Done {
            match self.state {
                State::LineStart { crlf } => {
                    if buf[i] == b'.' {
                        i += 1;
                        self.state = State::Dot { crlf };
                    } else {
                        self.state = State::Text;
                    }
                }
                State::Text => match next_newline(&buf[i..]) {
                    None => i = buf.len(),
                    Some(p) if buf[i + p] == b'\r' => {
                        i += p + 1;
                        self.state = State::Cr;
                    }
                    Some(p) => {
                        i += p;
                        self.on_bare(out, &buf[v..i], b"\r\n");
                        (i, v) = (i + 1, i + 1);
                    }
                },
                State::Dot { crlf } => match buf[i] {
                    b'\r' => {
                        i += 1;
                        self.state = State::DotCr { crlf };
                    }
                    b'\n' => {
                        self.on_bare(out, &buf[v..i], b".\r\n");
                        (i, v) = (i + 1, i + 1);
                    }
                    _ => self.state = State::Text,
                },
                State::Cr | State::DotCr { .. } => {
                    // The CR is `buf[i - 1]`, or held from the last call.
                    let cr = i.saturating_sub(1);
                    let dot = matches!(self.state, State::DotCr { .. });
                    if buf[i] != b'\n' {
                        let end: &[u8] = if dot { b".\r\n" } else { b"\r\n" };
                        self.on_bare(out, &buf[v..cr], end);
                        v = i;
                        continue;
                    }
                    if self.state == (State::DotCr { crlf: true }) {
                        self.state = State::Done;
                    } else {
                        if dot && self.emitting() {
                            // Only under `Normalize`: a lone `.` after a bare
                            // line end is stuffed.
                            out.extend_from_slice(&buf[v..cr]);
                            out.extend_from_slice(b".");
                            v = cr;
                        }
                        self.state = State::LineStart { crlf: true };
                    }
                    if i == 0 && self.emitting() {
                        out.extend_from_slice(b"\r");
                    }
                    i += 1;
                }
                State::Done => {}
            }
        }
        let keep = match self.state {
            State::Cr | State::DotCr { .. } => i.saturating_sub(1),
            _ => i,
        };
        if let (true, Some(rest)) = (self.emitting(), buf.get(v..keep)) {
            out.extend_from_slice(rest);
        }
        input.advance(i);
        self.consumed += i as u64;
        self.outcome()
    }

    /// Whether a bare CR or LF has been seen so far (both policies).
    pub fn saw_bare_newline(&self) -> bool {
        self.bare
    }

    /// Body bytes consumed so far (for size accounting / logs), the end's
    /// `.\r\n` included.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether bytes still go to the output.
    fn emitting(&self) -> bool {
        !(self.bare && self.policy == BareNewline::Reject)
    }

    /// A bare CR or LF ends the line: writes `before` (the input bytes not
    /// copied yet before it) and, under `Normalize`, `end` in its place.
    fn on_bare(&mut self, out: &mut BytesMut, before: &[u8], end: &[u8]) {
        if self.emitting() {
            out.extend_from_slice(before);
        }
        self.bare = true;
        if self.emitting() {
            out.extend_from_slice(end);
        }
        self.state = State::LineStart { crlf: false };
    }

    /// What [`DataFramer::feed`] reports in the current state.
    fn outcome(&self) -> Framed {
        match self.state {
            State::Done if self.emitting() => Framed::End,
            State::Done => Framed::Rejected,
            _ => Framed::More,
        }
    }
}

/// The first CR or LF in `hay` (short lines are common: look first).
fn next_newline(hay: &[u8]) -> Option<usize> {
    match hay.first() {
        Some(b'\r' | b'\n') => Some(0),
        _ => memchr::memchr2(b'\r', b'\n', hay),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NEXT: &[u8] = b"MAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\nDATA\r\nbody2\r\n.\r\n";
    /// smtpsmug's endings (hannob/smtpsmug), split at `|`.
    const SMUG: &[u8] =
        b"\n.\n|\r.\r|\r.\n|\n.\r|\n.\r\n|\r\n.\n|\r.\r\n|\r\n.\r|\r\n\0.\r\n|\r\n.\0\r\n";

    /// Feeds `data` cut at `cuts`: output, outcome, bytes left, consumed.
    fn run(policy: BareNewline, data: &[u8], cuts: &[usize]) -> (Vec<u8>, Framed, Vec<u8>, u64) {
        let (mut f, mut out) = (DataFramer::new(policy), BytesMut::new());
        let mut edges: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        edges.sort_unstable();
        edges.push(data.len());
        let mut start = 0;
        for end in edges {
            let mut input = BytesMut::from(&data[start..end]);
            let got = f.feed(&mut input, &mut out);
            if got != Framed::More {
                assert_eq!(f.feed(&mut input, &mut out), got, "same after the end");
                let seen = &data[..f.consumed() as usize];
                assert_eq!(f.saw_bare_newline(), first_bare(seen).is_some());
                input.extend_from_slice(&data[end..]);
                return (out.to_vec(), got, input.to_vec(), f.consumed());
            }
            assert!(input.is_empty(), "More must consume all");
            start = end;
        }
        (out.to_vec(), Framed::More, Vec::new(), f.consumed())
    }

    /// The spec, line by line, on a whole input.
    fn model(policy: BareNewline, d: &[u8]) -> (Vec<u8>, Framed, usize) {
        let (mut out, mut i, mut prev_crlf, mut bare) = (Vec::new(), 0, true, false);
        let normalize = policy == BareNewline::Normalize;
        while let Some(p) = d[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
            let p = i + p;
            let crlf = match (d[p], d.get(p + 1)) {
                (b'\r', None) => break,
                (b'\r', Some(b'\n')) => true,
                _ => false,
            };
            let line = &d[i..p];
            i = p + if crlf { 2 } else { 1 };
            if line == b"." && prev_crlf && crlf {
                let emit = normalize || !bare;
                out.extend_from_slice(if emit { b".\r\n" } else { b"" });
                return (out, if emit { Framed::End } else { Framed::Rejected }, i);
            }
            if normalize {
                out.extend_from_slice(if line == b"." { b".." } else { line });
                out.extend_from_slice(b"\r\n");
            } else if !bare {
                out.extend_from_slice(line);
                out.extend_from_slice(if crlf { b"\r\n" } else { b"" });
            }
            bare |= !crlf;
            prev_crlf = crlf;
        }
        let tail = d[i..].strip_suffix(b"\r").unwrap_or(&d[i..]);
        if normalize || !bare {
            out.extend_from_slice(tail);
        }
        (out, Framed::More, d.len())
    }

    fn first_bare(d: &[u8]) -> Option<usize> {
        (0..d.len()).find(|&i| match d[i] {
            b'\r' => d.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || d[i - 1] != b'\r',
            _ => false,
        })
    }

    /// Where each `\r\n.\r\n` in `\r\n` + `out` ends, as offsets in `out`.
    fn ends(out: &[u8]) -> Vec<usize> {
        let all = [b"\r\n", out].concat();
        (5..=all.len())
            .filter(|&e| &all[e - 5..e] == b"\r\n.\r\n")
            .map(|e| e - 2)
            .collect()
    }

    #[test]
    fn smuggling_variants() {
        for prefix in [&b"hello"[..], b"hello\r\n"] {
            for smug in SMUG.split(|&b| b == b'|') {
                let data = [prefix, smug, NEXT].concat();
                let (out, got, rest, n) = run(BareNewline::Normalize, &data, &[]);
                assert_eq!((got, rest.len(), n), (Framed::End, 0, data.len() as u64));
                assert!(first_bare(&out).is_none(), "{smug:?}");
                assert_eq!(ends(&out), vec![out.len()], "{smug:?}: {out:?}");
                assert!(out.ends_with(b"\r\nbody2\r\n.\r\n"));
                let (out, got, rest, _) = run(BareNewline::Reject, &data, &[]);
                assert!(rest.is_empty());
                match first_bare(&data) {
                    None => assert_eq!((got, out), (Framed::End, data.clone()), "{smug:?}"),
                    Some(bare) => {
                        assert_eq!(got, Framed::Rejected, "{smug:?}");
                        assert_eq!(out, &data[..bare], "{smug:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn empty_body_stuffed_dots_and_nul() {
        let stuffed = b"a\r\n..\r\n..foo\r\n...\r\n.x\r\n\0.\r\nb\0\r\n\r\n.\r\n";
        for body in [&b".\r\n"[..], b"\r\n.\r\n", stuffed] {
            for policy in [BareNewline::Normalize, BareNewline::Reject] {
                let (out, got, rest, n) = run(policy, &[body, b"QUIT\r\n"].concat(), &[3, 9]);
                assert_eq!((&out[..], got, n), (body, Framed::End, body.len() as u64));
                assert_eq!(rest, b"QUIT\r\n");
            }
        }
    }

    #[test]
    fn normalize_and_reject_examples() {
        let data = b"a\nb\rc\r\r\n.\n.\r\n.\r.\r\r\n.\r\n";
        let (out, got, _, _) = run(BareNewline::Normalize, data, &[5, 6, 13]);
        assert_eq!(got, Framed::End);
        assert_eq!(out, b"a\r\nb\r\nc\r\n\r\n..\r\n..\r\n..\r\n..\r\n\r\n.\r\n");
        let (out, got, rest, _) = run(BareNewline::Reject, b"ok\r\nbad\r.\r\n.\r\nX", &[8]);
        assert_eq!(
            (&out[..], got, &rest[..]),
            (&b"ok\r\nbad"[..], Framed::Rejected, &b"X"[..])
        );
    }

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => Just(b'\r'), 3 => Just(b'\n'), 3 => Just(b'.'),
            1 => Just(0u8), 2 => Just(b'a'), 1 => any::<u8>()
        ];
        prop::collection::vec(byte, 0..80)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn split_does_not_matter(data in bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            for policy in [BareNewline::Normalize, BareNewline::Reject] {
                let whole = run(policy, &data, &[]);
                prop_assert_eq!(&run(policy, &data, &cuts), &whole);
                let (out, got, n) = model(policy, &data);
                prop_assert_eq!((&whole.0, whole.1, whole.3), (&out, got, n as u64));
            }
        }

        #[test]
        fn normalize_output_is_safe(data in bytes()) {
            let (out, got, _, _) = run(BareNewline::Normalize, &data, &[]);
            prop_assert!(first_bare(&out).is_none());
            let want = if got == Framed::End { vec![out.len()] } else { vec![] };
            prop_assert_eq!(ends(&out), want);
        }

        #[test]
        fn crlf_lines_round_trip(
            lines in prop::collection::vec("[^\r\n]{0,12}", 0..12),
            cuts in prop::collection::vec(any::<usize>(), 0..4),
        ) {
            let mut data = Vec::new();
            for line in &lines {
                if line.starts_with('.') {
                    data.push(b'.');
                }
                data.extend_from_slice(line.as_bytes());
                data.extend_from_slice(b"\r\n");
            }
            data.extend_from_slice(b".\r\n");
            for policy in [BareNewline::Normalize, BareNewline::Reject] {
                let (out, got, rest, _) = run(policy, &data, &cuts);
                prop_assert_eq!((&out, got, rest.len()), (&data, Framed::End, 0));
            }
        }
    }
}
