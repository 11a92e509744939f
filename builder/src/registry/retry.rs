//! Retrying transient failures with exponential backoff.

use std::time::Duration;

use super::Result;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all (1 means no retry).
    pub attempts: u32,
    /// The pause before the first retry; it doubles each time, up to 8 s.
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// Runs `op` until it succeeds, fails for good, or runs out of attempts; `on_retry` hears
    /// about each transient failure before the pause.
    pub fn run<T>(
        &self,
        mut op: impl FnMut(u32) -> Result<T>,
        on_retry: impl Fn(&super::RegistryError),
    ) -> Result<T> {
        let mut pause = self.first_backoff;
        let mut attempt = 1;
        loop {
            match op(attempt) {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    on_retry(&e);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(8));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryError;

    fn flaky(n: u32) -> RegistryError {
        RegistryError::Status {
            host: "h".into(),
            op: "get".into(),
            status: 503,
            detail: format!("try {n}"),
        }
    }

    #[test]
    fn retries_transient_errors_then_gives_up() {
        let p = RetryPolicy {
            attempts: 3,
            first_backoff: Duration::from_millis(1),
        };
        let seen = std::sync::Mutex::new(0);
        let r: Result<u32> = p.run(
            |n| if n < 3 { Err(flaky(n)) } else { Ok(n) },
            |_| *seen.lock().unwrap() += 1,
        );
        assert_eq!(r.unwrap(), 3);
        assert_eq!(*seen.lock().unwrap(), 2);
        let r: Result<u32> = p.run(|n| Err(flaky(n)), |_| {});
        assert!(r.unwrap_err().to_string().contains("try 3"));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let p = RetryPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(1),
        };
        let mut calls = 0;
        let r: Result<()> = p.run(
            |_| {
                calls += 1;
                Err(RegistryError::NotFound { what: "x".into() })
            },
            |_| {},
        );
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
