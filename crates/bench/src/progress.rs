//! The progress bar on stderr (hidden with `--no-progress` or when stderr is not a terminal,
//! where one line per phase is printed instead), and the loop that keeps it current while a
//! phase runs.

use std::future::Future;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub bars: bool,
}

impl Progress {
    /// A bar of `len` units for one phase, labelled `prefix`.
    pub fn bar(&self, prefix: &str, len: u64, unit: &str) -> ProgressBar {
        if !self.bars {
            eprintln!("  {prefix} …");
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len.max(1));
        let template = format!("  {{prefix:<28}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}}");
        bar.set_style(
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A line between phases, above any bar.
    pub fn note(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// Awaits `fut`, calling `update` every 100 ms and once at the end.
pub async fn tracked<F: Future>(fut: F, mut update: impl FnMut()) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            out = &mut fut => {
                update();
                return out;
            }
            _ = tick.tick() => update(),
        }
    }
}
