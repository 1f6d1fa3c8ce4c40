//! `accommador events tail`: follows `/v1/events` in commit order by its cursor, printing each new
//! event once.
//!
//! The server has no push stream; the cursor makes polling exact. `after=` never skips an event
//! that commits late (DESIGN 3), so printing every item and moving the cursor to the last one
//! neither misses nor repeats an event. When the server goes away (a restart, a network error, a
//! 5xx), the same cursor is asked again with a growing pause until it answers.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::output::{EVENT_HEADER, event_line};
use super::{Client, query};

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Only events of this type.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only events about this user.
    #[arg(long, value_name = "usr_…")]
    pub user_id: Option<String>,
    /// Start after this event instead of at the end of the list.
    #[arg(long, value_name = "evt_…", conflicts_with = "from_start")]
    pub after: Option<String>,
    /// Print every retained event first, then follow.
    #[arg(long)]
    pub from_start: bool,
    /// How often to ask for new events.
    #[arg(long, default_value = "500ms", value_parser = parse_interval)]
    pub interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::config::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(50) || d > Duration::from_secs(3600) {
        return Err("must be between 50ms and 1h".into());
    }
    Ok(d)
}

#[derive(Deserialize)]
struct Page {
    data: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

/// Follows until SIGINT/SIGTERM (exit 0) or an answer that retrying cannot change (exit 1).
pub async fn run(c: &Client, json: bool, args: TailArgs) -> anyhow::Result<()> {
    let shutdown = crate::startup::shutdown_signal();
    tokio::pin!(shutdown);
    let follow = async {
        let mut tail = Tail {
            c,
            json,
            args: &args,
            cursor: args.after.clone(),
            failing: false,
        };
        if args.after.is_none() && !args.from_start {
            tail.skip_to_end().await?;
        }
        if !json {
            println!("{EVENT_HEADER}");
        }
        eprintln!("following events at {} (Ctrl-C to stop)", c.server());
        loop {
            tail.step(true).await?;
        }
    };
    tokio::select! {
        r = follow => r,
        () = &mut shutdown => Ok(()),
    }
}

struct Tail<'a> {
    c: &'a Client,
    json: bool,
    args: &'a TailArgs,
    cursor: Option<String>,
    /// The last request failed: the next success says the server is back.
    failing: bool,
}

impl Tail<'_> {
    /// Moves the cursor past every event that exists now, printing none.
    async fn skip_to_end(&mut self) -> anyhow::Result<()> {
        while self.step(false).await? {}
        Ok(())
    }

    /// Asks once for the page after the cursor; prints its events (when `print`) and moves the
    /// cursor past them. `Ok(true)` when more pages are ready, `Ok(false)` once it has slept at
    /// the end of the list or after a transient failure.
    async fn step(&mut self, print: bool) -> anyhow::Result<bool> {
        let path = format!(
            "/v1/events{}",
            query(&[
                ("type", self.args.event_type.clone()),
                ("user_id", self.args.user_id.clone()),
                ("limit", Some("500".into())),
                ("after", self.cursor.clone()),
            ])
        );
        let answer = match self.c.call(reqwest::Method::GET, &path, None).await {
            Ok(answer) => answer,
            Err(e) if e.is_transient() => {
                if !self.failing {
                    eprintln!(
                        "lost the server ({e}); retrying after {}",
                        self.cursor.as_deref().unwrap_or("the start")
                    );
                    self.failing = true;
                }
                tokio::time::sleep(self.args.interval.max(Duration::from_millis(500))).await;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        if self.failing {
            eprintln!("the server is back; continuing");
            self.failing = false;
        }
        let page: Page =
            serde_json::from_str(&answer.body).context("the server answered with no list")?;
        for item in &page.data {
            let id: Id = serde_json::from_str(item.get()).context("an event without an id")?;
            if print {
                if self.json {
                    println!("{}", item.get());
                } else {
                    println!("{}", event_line(item.get())?);
                }
            }
            self.cursor = Some(id.id);
        }
        match page.next_cursor {
            Some(next) => {
                // A page cut short by a filter still moves on.
                self.cursor = Some(next);
                Ok(true)
            }
            None => {
                tokio::time::sleep(self.args.interval).await;
                Ok(false)
            }
        }
    }
}
