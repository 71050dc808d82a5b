//! Where and how log lines are written.
//!
//! - `postscreen` (the default): each line in the layout of a syslog mail
//!   log, `Mmm dd hh:mm:ss host tag[pid]: event`, exactly what fail2ban's
//!   `postfix` filter and pflogsumm read from `/var/log/mail.log`. Warnings
//!   carry postscreen's own `warning:` prefix in the event text; debug lines
//!   get `debug:`.
//! - `json`: one object per event.
//! - On stderr, lines are written in batches ([`crate::logbuffer`]).
//! - `syslog = true`: each line goes as one datagram to the local syslog
//!   socket, with the mail facility's priority, and syslog adds the host.
//!
//! It reads only the `[log]` section; it never decides what is logged.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSection};
use crate::logbuffer::{self, BufferedStderr};

/// The filter when `DOORMAN_LOG` is unset: doorman's lines, not the DNS
/// library's chatter.
pub const DEFAULT_FILTER: &str = "info,hickory_proto=warn,hickory_resolver=warn,hickory_net=warn";

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The syslog socket could not be reached.
    #[error("cannot use the syslog socket {path}: {source}")]
    Syslog {
        /// The socket path.
        path: String,
        /// What the operating system said.
        source: io::Error,
    },
    /// A subscriber was already installed.
    #[error("logging was already set up")]
    AlreadySet,
}

/// The syslog-layout formatter.
struct MailLog {
    /// Whether a line starts with its syslog priority (for the syslog
    /// socket, which adds the host itself).
    with_priority: bool,
    /// What follows the timestamp, ` host tag[pid]: ` (or ` tag[pid]: `),
    /// made once: it is the same on every line.
    after_stamp: String,
}

impl MailLog {
    /// The formatter for lines tagged `tag` from process `pid`, naming
    /// `host` (`None`: the syslog socket's lines, which it names).
    fn new(tag: &str, host: Option<&str>, pid: u32) -> Self {
        Self {
            with_priority: host.is_none(),
            after_stamp: match host {
                Some(host) => format!(" {host} {tag}[{pid}]: "),
                None => format!(" {tag}[{pid}]: "),
            },
        }
    }
}

/// The mail facility's priority for a level (RFC 5424: facility 2).
fn priority(level: &Level) -> u8 {
    16 + match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for MailLog
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level();
        if self.with_priority {
            write!(writer, "<{}>", priority(level))?;
        }
        with_stamp(|stamp| writer.write_str(stamp))?;
        writer.write_str(&self.after_stamp)?;
        if *level >= Level::DEBUG {
            writer.write_str("debug: ")?;
        }
        // Every part of a line is escaped here, whoever wrote it (an error
        // text from a library, the OS or Redis may hold a CR or LF): one
        // event is one line. The fields are written whole first and then
        // escaped in one pass: an address alone is ten writes, and
        // escaping each costs more than the copy.
        FIELDS.with(|fields| match fields.try_borrow_mut() {
            Ok(mut fields) => {
                fields.clear();
                ctx.field_format()
                    .format_fields(Writer::new(&mut *fields), event)?;
                let escaped = Escaped(&mut writer).write_str(&fields);
                if fields.capacity() > KEEP_FIELDS_AT_MOST {
                    *fields = String::new();
                }
                escaped
            }
            Err(_) => ctx
                .field_format()
                .format_fields(Writer::new(&mut Escaped(&mut writer)), event),
        })?;
        writeln!(writer)
    }
}

/// A fields buffer this big is given back after use.
const KEEP_FIELDS_AT_MOST: usize = 64 * 1024;

thread_local! {
    /// An event's fields before they are escaped (kept between lines).
    static FIELDS: RefCell<String> = const { RefCell::new(String::new()) };
    /// The second [`with_stamp`] last formatted, and its text.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Calls `write` with the syslog timestamp of now, `Mmm dd hh:mm:ss` in
/// local time. It is formatted once per second per thread: a flood logs
/// thousands of lines a second, and the time zone lookup and `strftime`
/// cost more than the rest of a line.
fn with_stamp<R>(write: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    STAMP.with_borrow_mut(|(formatted_at, text)| {
        if *formatted_at != second {
            text.clear();
            let local = chrono::DateTime::<chrono::Local>::from(now);
            // Writing to a String cannot fail.
            let _ = write!(text, "{}", local.format("%b %e %H:%M:%S"));
            *formatted_at = second;
        }
        write(text)
    })
}

/// Writes through to `W`, C-escaping control characters (`\r`, `\n`, `\t`,
/// `\ooo`). Backslashes pass as they are: client text reaches the line
/// escaped already, backslashes included.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        // A control character is one byte, never part of a longer UTF-8
        // sequence: bytes are scanned, not characters.
        while let Some(at) = rest.bytes().position(|byte| byte.is_ascii_control()) {
            self.0.write_str(&rest[..at])?;
            let byte = rest.as_bytes()[at];
            match byte {
                b'\r' => self.0.write_str("\\r")?,
                b'\n' => self.0.write_str("\\n")?,
                b'\t' => self.0.write_str("\\t")?,
                other => write!(self.0, "\\{other:03o}")?,
            }
            rest = &rest[at + 1..];
        }
        self.0.write_str(rest)
    }
}

/// An event's fields as `tracing_subscriber`'s default writes them (the
/// message, then ` name=value` for any other field, `log.` fields left
/// out), in one pass: the default one also runs each write through an
/// escaping writer of its own, which [`Escaped`] makes redundant here, and
/// costs 0.7 us a line against 0.4 (a flood's refusal logs three).
struct MessageFields;

impl<'w> FormatFields<'w> for MessageFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// Writes the fields [`MessageFields`] visits.
struct FieldWriter<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl tracing::field::Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.record_debug(field, &format_args!("{value}")),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let padding = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match name {
            "message" => write!(self.writer, "{padding}{value:?}"),
            _ => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(self.writer, "{padding}{name}={value:?}")
            }
        };
    }
}

/// Sends every write as one datagram to the syslog socket.
#[derive(Clone)]
struct Syslog {
    socket: Arc<UnixDatagram>,
}

impl io::Write for &Syslog {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let line = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let _ = self.socket.send(line);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = &'a Syslog;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Installs the global subscriber for `settings`. `DOORMAN_LOG` overrides
/// the filter.
pub fn init(settings: &LogSection) -> Result<(), LogError> {
    let filter =
        EnvFilter::try_from_env("DOORMAN_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let result = match (settings.format, settings.syslog) {
        (LogFormat::Json, false) => builder
            .json()
            .flatten_event(true)
            .with_writer(BufferedStderr(logbuffer::stderr()))
            .try_init(),
        (LogFormat::Json, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(syslog(&settings.syslog_socket)?)
            .try_init(),
        (LogFormat::Postscreen, false) => builder
            .fmt_fields(MessageFields)
            .event_format(MailLog::new(
                &settings.syslog_tag,
                Some(
                    gethostname::gethostname()
                        .to_string_lossy()
                        .split('.')
                        .next()
                        .unwrap_or("localhost"),
                ),
                std::process::id(),
            ))
            .with_writer(BufferedStderr(logbuffer::stderr()))
            .try_init(),
        (LogFormat::Postscreen, true) => builder
            .fmt_fields(MessageFields)
            .event_format(MailLog::new(&settings.syslog_tag, None, std::process::id()))
            .with_writer(syslog(&settings.syslog_socket)?)
            .try_init(),
    };
    result.map_err(|_| LogError::AlreadySet)
}

fn syslog(path: &Path) -> Result<Syslog, LogError> {
    let fail = |source| LogError::Syslog {
        path: path.display().to_string(),
        source,
    };
    let socket = UnixDatagram::unbound().map_err(fail)?;
    socket.connect(path).map_err(fail)?;
    Ok(Syslog {
        socket: Arc::new(socket),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_is_the_syslog_layout_of_now_formatted_or_cached() {
        for _ in 0..2 {
            loop {
                let before = chrono::Local::now();
                let stamp = with_stamp(str::to_string);
                let after = chrono::Local::now();
                if before.timestamp() == after.timestamp() {
                    assert_eq!(stamp, before.format("%b %e %H:%M:%S").to_string());
                    break;
                }
            }
        }
    }

    #[test]
    fn control_characters_are_escaped_and_backslashes_kept() {
        let mut line = String::new();
        write!(
            Escaped(&mut line),
            "malformed v1 header: Header must end in '\r\n'. from [192.0.2.1]:1: EHLO \\r\t\x07 é\x7fü"
        )
        .unwrap();
        assert_eq!(
            line,
            "malformed v1 header: Header must end in '\\r\\n'. from [192.0.2.1]:1: EHLO \\r\\t\\007 é\\177ü"
        );
    }

    /// Lines a test subscriber writes, shared with the test.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            crate::locks::lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A whole line: the stamp, host, tag and pid, then the fields with
    /// every control character escaped, wherever it came from.
    #[test]
    fn a_line_is_the_mail_log_layout_with_its_fields_escaped() {
        for (host, starts) in [(Some("mx"), ["", ""]), (None, ["<22>", "<23>"])] {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .fmt_fields(MessageFields)
                .event_format(MailLog::new("postfix/postscreen", host, 7))
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::event!(
                    tracing::Level::INFO,
                    reason = %"a\r\nb",
                    "CONNECT from {} to [198.51.100.25]:25\x7f",
                    crate::log::Endpoint("[2001:db8::1]:40000".parse().unwrap())
                );
                tracing::event!(tracing::Level::DEBUG, "second\tline");
            });
            let text = String::from_utf8(crate::locks::lock(&lines.0).clone()).unwrap();
            let prefix = match host {
                Some(host) => format!(" {host} postfix/postscreen[7]: "),
                None => " postfix/postscreen[7]: ".to_string(),
            };
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 2, "{text}");
            for ((line, rest), start) in lines
                .iter()
                .zip([
                    "CONNECT from [2001:db8::1]:40000 to [198.51.100.25]:25\\177 reason=a\\r\\nb",
                    "debug: second\\tline",
                ])
                .zip(starts)
            {
                let line = line.strip_prefix(start).unwrap_or_else(|| panic!("{line}"));
                // `Mmm dd hh:mm:ss` is 15 characters.
                assert_eq!(&line[15..], format!("{prefix}{rest}"), "{line}");
            }
        }
    }

    /// The one-pass field writer writes what the default one writes.
    #[test]
    fn fields_are_written_as_the_default_formatter_writes_them() {
        // Literal events (`event!`, which the log-call scan of
        // tests/it/log_sources.rs leaves to this test): a message alone,
        // fields after it, and a field before it.
        let emit = || {
            use tracing::Level;
            tracing::event!(
                Level::INFO,
                "CONNECT from [192.0.2.1]:40000 to [198.51.100.25]:25"
            );
            tracing::event!(
                Level::WARN,
                attempt = 2,
                r#type = "A",
                name = "bl.test",
                "lookup failed"
            );
            tracing::event!(Level::INFO, reason = %"a\\rb", "with a display field");
        };
        let format = |plain: bool| {
            let lines = Lines::default();
            let writer = lines.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_target(false)
                .without_time()
                .with_level(false)
                .with_writer(move || writer.clone());
            match plain {
                true => tracing::subscriber::with_default(
                    builder.fmt_fields(MessageFields).finish(),
                    emit,
                ),
                false => tracing::subscriber::with_default(builder.finish(), emit),
            }
            let bytes = crate::locks::lock(&lines.0).clone();
            String::from_utf8(bytes).unwrap()
        };
        let ours = format(true);
        assert_eq!(ours, format(false));
        assert!(
            ours.contains("lookup failed attempt=2 type=\"A\" name=\"bl.test\"\n"),
            "{ours}"
        );
    }
}
