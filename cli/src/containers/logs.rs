//! A container's log: stdout and stderr as JSON lines (`{"log":..,"stream":..,"time":..}`,
//! Docker's `json-file` format), written by the monitor and read by `kiln logs`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// One log line.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) log: String,
    pub(crate) stream: String,
    pub(crate) time: String,
}

/// Appends entries to a container's log; shared by the stream pumps.
pub(crate) struct LogWriter {
    file: Mutex<File>,
}

/// The longest line kept whole; longer ones are split, as Docker splits at 16 KiB.
const MAX_LINE: usize = 16 * 1024;

impl LogWriter {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Arc<LogWriter>> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        Ok(Arc::new(LogWriter {
            file: Mutex::new(file),
        }))
    }

    fn write(&self, stream: &str, line: &[u8]) {
        let entry = Entry {
            log: String::from_utf8_lossy(line).into_owned(),
            stream: stream.to_string(),
            time: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        };
        let mut json = serde_json::to_vec(&entry).expect("entry serializes");
        json.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk loses log lines, not the container.
        let _ = f.write_all(&json);
    }
}

/// Copies `input` to the log as `stream` lines until it ends, and each chunk as it comes to
/// `echo` (the terminal of a container run in the foreground).
pub(crate) fn pump(
    mut input: impl Read,
    stream: &str,
    log: Option<&LogWriter>,
    mut echo: Option<&mut dyn Write>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the terminal's other side closed (the container ended).
            Err(_) => break,
        };
        if let Some(w) = echo.as_mut() {
            let _ = w.write_all(&buf[..n]);
            let _ = w.flush();
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let rest = pending.split_off(pos + 1);
            if let Some(l) = log {
                l.write(stream, &pending);
            }
            pending = rest;
        }
        while pending.len() >= MAX_LINE {
            let rest = pending.split_off(MAX_LINE);
            if let Some(l) = log {
                l.write(stream, &pending);
            }
            pending = rest;
        }
    }
    if !pending.is_empty()
        && let Some(l) = log
    {
        l.write(stream, &pending);
    }
}

/// How `kiln logs` prints.
pub(crate) struct PrintOptions {
    pub(crate) timestamps: bool,
    /// Only the last N lines.
    pub(crate) tail: Option<usize>,
}

fn print_entry(e: &Entry, opts: &PrintOptions) -> std::io::Result<()> {
    let text = if opts.timestamps {
        format!("{} {}", e.time, e.log)
    } else {
        e.log.clone()
    };
    if e.stream == "stderr" {
        let mut err = std::io::stderr().lock();
        err.write_all(text.as_bytes())?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }
}

/// Prints the log; with `follow`, keeps printing what is appended until `done()` says the
/// container has ended (and everything it wrote was printed).
pub(crate) fn print(
    path: &Path,
    opts: &PrintOptions,
    follow: bool,
    done: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            File::open("/dev/null").context("open /dev/null")?
        }
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut line = String::new();
    // Whole lines only: a line being written is read again once complete.
    let mut read_complete = |reader: &mut BufReader<File>, out: &mut Vec<Entry>| {
        loop {
            line.clear();
            let start = reader.stream_position().unwrap_or(0);
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if !line.ends_with('\n') => {
                    let _ = reader.seek(SeekFrom::Start(start));
                    break;
                }
                Ok(_) => {
                    if let Ok(e) = serde_json::from_str::<Entry>(&line) {
                        out.push(e);
                    }
                }
            }
        }
    };
    read_complete(&mut reader, &mut entries);
    let skip = opts.tail.map_or(0, |n| entries.len().saturating_sub(n));
    for e in &entries[skip..] {
        print_entry(e, opts)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        let finished = done();
        let mut fresh = Vec::new();
        read_complete(&mut reader, &mut fresh);
        for e in &fresh {
            print_entry(e, opts)?;
        }
        if finished && fresh.is_empty() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_kept_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = LogWriter::open(&path).unwrap();
        pump(&b"one\ntwo\npartial"[..], "stdout", Some(&log), None);
        pump(&b"err\n"[..], "stderr", Some(&log), None);
        let text = std::fs::read_to_string(&path).unwrap();
        let entries: Vec<Entry> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let logs: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.stream.as_str(), e.log.as_str()))
            .collect();
        assert_eq!(
            logs,
            [
                ("stdout", "one\n"),
                ("stdout", "two\n"),
                ("stdout", "partial"),
                ("stderr", "err\n")
            ]
        );
        assert!(entries[0].time.contains('T'));
    }
}
