//! Transfer progress for pull and push: one indicatif bar per blob on a terminal, plain
//! lines otherwise (CI logs), nothing with `-q`.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;

use builder::registry::TransferProgress;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Renders [`TransferProgress`] events on stderr.
pub(crate) enum Progress {
    /// Bars, one per blob.
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
    /// A line when a blob starts, finishes or retries.
    Lines,
    /// Nothing.
    Quiet,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise, nothing when `quiet`.
    pub(crate) fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars {
                multi: MultiProgress::new(),
                bars: Mutex::new(HashMap::new()),
            }
        } else {
            Progress::Lines
        }
    }

    /// Prints a line without tearing the bars.
    pub(crate) fn line(&self, text: &str) {
        match self {
            Progress::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Progress::Lines => eprintln!("{text}"),
            Progress::Quiet => {}
        }
    }

    fn bar(&self, id: &str) -> Option<ProgressBar> {
        match self {
            Progress::Bars { multi, bars } => {
                let mut bars = bars.lock().expect("progress lock");
                Some(
                    bars.entry(id.to_string())
                        .or_insert_with(|| {
                            let b = multi.add(ProgressBar::new(0));
                            b.set_style(
                                ProgressStyle::with_template(
                                    "{prefix}: {msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                                )
                                .expect("template is valid")
                                .progress_chars("=> "),
                            );
                            b.set_prefix(id.to_string());
                            b
                        })
                        .clone(),
                )
            }
            _ => None,
        }
    }
}

impl TransferProgress for Progress {
    fn start(&self, id: &str, action: &str, total: u64) {
        match self.bar(id) {
            Some(b) => {
                b.set_length(total);
                b.set_position(0);
                b.set_message(action.to_string());
            }
            None => self.line(&format!(
                "{id}: {action} ({})",
                crate::commands::images::human_size(total)
            )),
        }
    }

    fn advance(&self, id: &str, bytes: u64) {
        if let Some(b) = self.bar(id) {
            b.inc(bytes);
        }
    }

    fn finish(&self, id: &str, status: &str) {
        match self.bar(id) {
            Some(b) => {
                b.set_style(
                    ProgressStyle::with_template("{prefix}: {msg}").expect("template is valid"),
                );
                b.finish_with_message(status.to_string());
            }
            None => self.line(&format!("{id}: {status}")),
        }
    }

    fn retry(&self, id: &str, why: &str) {
        self.line(&format!("{id}: retrying after: {why}"));
    }
}
