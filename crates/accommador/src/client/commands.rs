//! The resource subcommands (DESIGN 10): their arguments, the request each one sends, and what it
//! prints. One function per resource maps a subcommand to one API call.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::output::{Column, print_object, print_rows, spinner};
use super::{Answer, Client, Connection, query, segment};

/// `--limit`, `--after` and `--all` of a listing.
#[derive(Debug, Clone, Args)]
pub struct Paging {
    /// Page size, 1–500 (the server's default: 50).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start after this cursor (the `next_cursor` of an earlier page).
    #[arg(long, value_name = "CURSOR")]
    pub after: Option<String>,
    /// Follow `next_cursor` to the end of the list (a progress bar on a terminal).
    #[arg(long)]
    pub all: bool,
}

/// A resource command: the connection settings, then the subcommand.
#[derive(Debug, Args)]
pub struct Resource<C: Subcommand> {
    #[command(flatten)]
    pub conn: Connection,
    #[command(subcommand)]
    pub command: C,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (one `user.created` event).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// A JSON object, at most 16 KiB.
        #[arg(long, value_name = "JSON")]
        attributes: Option<String>,
        /// Sent as `Idempotency-Key`: a retry with the same key changes nothing.
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
    },
    /// Show one user.
    Get { id: String },
    /// List users, oldest first.
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Change a user's email, name or attributes (one `user.updated` event if anything changed).
    Update {
        id: String,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// A JSON object that replaces the attributes as a whole.
        #[arg(long, value_name = "JSON")]
        attributes: Option<String>,
    },
    /// Delete a user (one `user.deleted` event).
    Delete { id: String },
    /// Erase a user's personal data everywhere (deleting a live user first; the rest runs in
    /// the background).
    Erase { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Register an endpoint; prints its signing secret (whsec_…).
    Create {
        #[arg(long)]
        url: String,
        /// Comma-separated event types; absent: every user event.
        #[arg(long, value_delimiter = ',', value_name = "TYPES")]
        event_types: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        /// `per_user`: each user's events arrive in commit order; absent: `none`.
        #[arg(long, value_parser = ["none", "per_user"])]
        ordering: Option<String>,
        /// Deliveries per second at most, across all instances; absent: no limit.
        #[arg(long, value_name = "N")]
        rate_limit: Option<u32>,
    },
    /// Show one endpoint.
    Get { id: String },
    /// List endpoints.
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Change an endpoint's URL, event types, description, status, ordering or rate limit.
    Update {
        id: String,
        #[arg(long)]
        url: Option<String>,
        /// Comma-separated event types.
        #[arg(long, value_delimiter = ',', value_name = "TYPES")]
        event_types: Option<Vec<String>>,
        #[arg(long)]
        description: Option<String>,
        /// `enabled` or `disabled`.
        #[arg(long, value_parser = ["enabled", "disabled"])]
        status: Option<String>,
        /// `none` or `per_user` (each user's events in commit order).
        #[arg(long, value_parser = ["none", "per_user"])]
        ordering: Option<String>,
        /// Deliveries per second at most, or `none` to remove the limit.
        #[arg(long, value_name = "N|none", value_parser = parse_rate_limit)]
        rate_limit: Option<RateLimit>,
    },
    /// Delete an endpoint (its pending deliveries are cancelled).
    Delete { id: String },
    /// Make a new signing secret; the previous one keeps signing beside it for 24 h.
    RotateSecret { id: String },
    /// Send a `webhook.test` event to this endpoint only.
    Test { id: String },
    /// Re-queue failed deliveries in a window and create the ones the endpoint never got.
    Recover {
        id: String,
        /// RFC 3339 time to recover from.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// RFC 3339 time to recover up to (exclusive); default: now.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        #[arg(long, value_name = "ep_…")]
        endpoint_id: Option<String>,
        #[arg(long, value_name = "evt_…")]
        event_id: Option<String>,
        #[arg(long, value_name = "usr_…")]
        user_id: Option<String>,
        #[arg(long, value_name = "TYPE")]
        event_type: Option<String>,
        /// `pending`, `succeeded` or `failed`.
        #[arg(long)]
        status: Option<String>,
        /// RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one delivery.
    Get { id: String },
    /// The delivery log: every attempt of one delivery.
    Attempts { id: String },
    /// One manual attempt as soon as possible.
    Retry { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events in commit order.
    List {
        /// Only events of this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        #[arg(long, value_name = "usr_…")]
        user_id: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one event (exactly the webhook body).
    Get { id: String },
    /// Print new events as they commit, until interrupted; survives server restarts.
    Tail(super::tail::TailArgs),
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key; it is shown only now.
    Create { name: String },
    /// List the organization's keys (no secrets).
    List,
    /// Revoke a key (not the organization's last one).
    Revoke { id: String },
}

const USER_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("EMAIL", "/email"),
    ("NAME", "/name"),
    ("VERSION", "/version"),
    ("UPDATED", "/updated_at"),
];
const ENDPOINT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("URL", "/url"),
    ("STATUS", "/status"),
    ("EVENT TYPES", "/event_types"),
    ("ORDERING", "/ordering"),
    ("RATE LIMIT", "/rate_limit"),
    ("CONCURRENCY", "/current_concurrency"),
    ("DESCRIPTION", "/description"),
];
const DELIVERY_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("EVENT", "/event_id"),
    ("TYPE", "/event_type"),
    ("ENDPOINT", "/endpoint_id"),
    ("STATUS", "/status"),
    ("ATTEMPTS", "/attempt_count"),
    ("LAST CODE", "/last_status_code"),
    ("NEXT ATTEMPT", "/next_attempt_at"),
];
const ATTEMPT_COLUMNS: &[Column] = &[
    ("#", "/number"),
    ("TRIGGER", "/trigger"),
    ("STARTED", "/started_at"),
    ("MS", "/duration_ms"),
    ("CODE", "/status_code"),
    ("ERROR CLASS", "/error_class"),
    ("ERROR", "/error"),
];
pub(super) const EVENT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("TYPE", "/type"),
    ("TIMESTAMP", "/timestamp"),
    ("USER", "/data/user/id"),
    ("VERSION", "/data/user/version"),
];
const KEY_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("PREFIX", "/prefix"),
    ("CREATED", "/created_at"),
];

pub async fn users(r: Resource<UsersCommand>) -> anyhow::Result<()> {
    let c = Client::new(&r.conn)?;
    let json = r.conn.json;
    let path = |id: &str, rest: &str| format!("/v1/users/{}{rest}", segment(id));
    match r.command {
        UsersCommand::Create {
            email,
            name,
            attributes,
            idempotency_key,
        } => {
            let body = object(vec![
                ("email", text(Some(email))),
                ("name", text(name)),
                ("attributes", parse_object(attributes)?),
            ]);
            let answer = match idempotency_key {
                None => c.post("/v1/users", Some(&body)).await?,
                Some(key) => c.post_idempotent("/v1/users", &body, &key).await?,
            };
            show(json, &answer)
        }
        UsersCommand::Get { id } => show(json, &c.get(&path(&id, "")).await?),
        UsersCommand::List { paging } => {
            list(&c, json, "/v1/users", &[], &paging, USER_COLUMNS).await
        }
        UsersCommand::Update {
            id,
            email,
            name,
            attributes,
        } => {
            let body = changes(
                vec![
                    ("email", text(email)),
                    ("name", text(name)),
                    ("attributes", parse_object(attributes)?),
                ],
                "--email, --name or --attributes",
            )?;
            show(json, &c.patch(&path(&id, ""), &body).await?)
        }
        UsersCommand::Delete { id } => {
            c.delete(&path(&id, "")).await?;
            done(json, &id, "deleted")
        }
        UsersCommand::Erase { id } => {
            c.post(&path(&id, "/erase"), None).await?;
            done(json, &id, "erasure started")
        }
    }
}

pub async fn endpoints(r: Resource<EndpointsCommand>) -> anyhow::Result<()> {
    let c = Client::new(&r.conn)?;
    let json = r.conn.json;
    let path = |id: &str, rest: &str| format!("/v1/endpoints/{}{rest}", segment(id));
    match r.command {
        EndpointsCommand::Create {
            url,
            event_types,
            description,
            ordering,
            rate_limit,
        } => {
            let body = object(vec![
                ("url", text(Some(url))),
                ("event_types", event_types.map(|t| json!(t))),
                ("description", text(description)),
                ("ordering", text(ordering)),
                ("rate_limit", rate_limit.map(|n| json!(n))),
            ]);
            show(json, &c.post("/v1/endpoints", Some(&body)).await?)
        }
        EndpointsCommand::Get { id } => show(json, &c.get(&path(&id, "")).await?),
        EndpointsCommand::List { paging } => {
            list(&c, json, "/v1/endpoints", &[], &paging, ENDPOINT_COLUMNS).await
        }
        EndpointsCommand::Update {
            id,
            url,
            event_types,
            description,
            status,
            ordering,
            rate_limit,
        } => {
            let body = changes(
                vec![
                    ("url", text(url)),
                    ("event_types", event_types.map(|t| json!(t))),
                    ("description", text(description)),
                    ("status", text(status)),
                    ("ordering", text(ordering)),
                    ("rate_limit", rate_limit.map(|r| json!(r.0))),
                ],
                "--url, --event-types, --description, --status, --ordering or --rate-limit",
            )?;
            show(json, &c.patch(&path(&id, ""), &body).await?)
        }
        EndpointsCommand::Delete { id } => {
            c.delete(&path(&id, "")).await?;
            done(json, &id, "deleted")
        }
        EndpointsCommand::RotateSecret { id } => {
            show(json, &c.post(&path(&id, "/secret/rotate"), None).await?)
        }
        EndpointsCommand::Test { id } => {
            c.post(&path(&id, "/test"), None).await?;
            done(json, &id, "test event queued")
        }
        EndpointsCommand::Recover { id, since, until } => {
            let body = object(vec![("since", text(Some(since))), ("until", text(until))]);
            let bar = spinner("recovering");
            let answer = c.post(&path(&id, "/recover"), Some(&body)).await;
            bar.finish_and_clear();
            let answer = answer?;
            if json {
                println!("{}", answer.body);
            } else {
                let counts = answer.json()?;
                println!(
                    "re-queued {} failed deliveries and created {} missed ones",
                    cell_u64(&counts["requeued"]),
                    cell_u64(&counts["created"])
                );
            }
            Ok(())
        }
    }
}

pub async fn deliveries(r: Resource<DeliveriesCommand>) -> anyhow::Result<()> {
    let c = Client::new(&r.conn)?;
    let json = r.conn.json;
    let path = |id: &str, rest: &str| format!("/v1/deliveries/{}{rest}", segment(id));
    match r.command {
        DeliveriesCommand::List {
            endpoint_id,
            event_id,
            user_id,
            event_type,
            status,
            since,
            until,
            paging,
        } => {
            let filters = [
                ("endpoint_id", endpoint_id),
                ("event_id", event_id),
                ("user_id", user_id),
                ("event_type", event_type),
                ("status", status),
                ("since", since),
                ("until", until),
            ];
            list(
                &c,
                json,
                "/v1/deliveries",
                &filters,
                &paging,
                DELIVERY_COLUMNS,
            )
            .await
        }
        DeliveriesCommand::Get { id } => show(json, &c.get(&path(&id, "")).await?),
        DeliveriesCommand::Attempts { id } => {
            let answer = c.get(&path(&id, "/attempts")).await?;
            if json {
                println!("{}", answer.body);
                return Ok(());
            }
            let body = answer.json()?;
            let rows = body["data"].as_array().cloned().unwrap_or_default();
            print_rows(ATTEMPT_COLUMNS, &rows);
            Ok(())
        }
        DeliveriesCommand::Retry { id } => {
            c.post(&path(&id, "/retry"), None).await?;
            done(json, &id, "retry queued")
        }
    }
}

pub async fn events(r: Resource<EventsCommand>) -> anyhow::Result<()> {
    let c = Client::new(&r.conn)?;
    let json = r.conn.json;
    match r.command {
        EventsCommand::List {
            event_type,
            user_id,
            paging,
        } => {
            let filters = [("type", event_type), ("user_id", user_id)];
            list(&c, json, "/v1/events", &filters, &paging, EVENT_COLUMNS).await
        }
        EventsCommand::Get { id } => {
            show(json, &c.get(&format!("/v1/events/{}", segment(&id))).await?)
        }
        EventsCommand::Tail(args) => super::tail::run(&c, json, args).await,
    }
}

pub async fn api_keys(r: Resource<ApiKeysCommand>) -> anyhow::Result<()> {
    let c = Client::new(&r.conn)?;
    let json = r.conn.json;
    match r.command {
        ApiKeysCommand::Create { name } => {
            let answer = c
                .post("/v1/api-keys", Some(&json!({ "name": name })))
                .await?;
            show(json, &answer)?;
            if !json {
                eprintln!("(the API key is shown only now; store it somewhere safe)");
            }
            Ok(())
        }
        ApiKeysCommand::List => {
            let paging = Paging {
                limit: None,
                after: None,
                all: true,
            };
            list(&c, json, "/v1/api-keys", &[], &paging, KEY_COLUMNS).await
        }
        ApiKeysCommand::Revoke { id } => {
            c.delete(&format!("/v1/api-keys/{}", segment(&id))).await?;
            done(json, &id, "revoked")
        }
    }
}

/// One object: the server's JSON as it came, or a field table.
fn show(json: bool, answer: &Answer) -> anyhow::Result<()> {
    if json {
        println!("{}", answer.body);
    } else {
        print_object(&answer.json()?);
    }
    Ok(())
}

/// A command whose answer has no body (204/202): `{"id", "result"}` for scripts.
fn done(json: bool, id: &str, what: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", json!({ "id": id, "result": what }));
    } else {
        println!("{id} {what}");
    }
    Ok(())
}

/// A listing: one page, or with `--all` every page (counted on a progress bar). `--json` prints
/// `{"data": [...], "next_cursor": …}` with the items as the server wrote them.
async fn list(
    c: &Client,
    json: bool,
    path: &str,
    filters: &[(&str, Option<String>)],
    paging: &Paging,
    columns: &[Column],
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Page {
        data: Vec<Box<serde_json::value::RawValue>>,
        next_cursor: Option<String>,
    }
    let bar = if paging.all {
        spinner("fetched")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut items = Vec::new();
    let mut cursor = paging.after.clone();
    let next_cursor = loop {
        let mut pairs: Vec<(&str, Option<String>)> = filters.to_vec();
        pairs.push(("limit", paging.limit.map(|l| l.to_string())));
        pairs.push(("after", cursor.clone()));
        let answer = c.get(&format!("{path}{}", query(&pairs))).await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e);
            }
        };
        let page: Page =
            serde_json::from_str(&answer.body).context("the server answered with no list")?;
        bar.inc(page.data.len() as u64);
        items.extend(page.data);
        match page.next_cursor {
            Some(next) if paging.all => cursor = Some(next),
            other => break other,
        }
    };
    bar.finish_and_clear();
    if json {
        let data: Vec<&str> = items.iter().map(|i| i.get()).collect();
        println!(
            "{{\"data\":[{}],\"next_cursor\":{}}}",
            data.join(","),
            serde_json::to_string(&next_cursor)?
        );
        return Ok(());
    }
    let rows = items
        .iter()
        .map(|i| serde_json::from_str(i.get()))
        .collect::<Result<Vec<Value>, _>>()?;
    print_rows(columns, &rows);
    if let Some(next) = next_cursor {
        eprintln!("more: --after {next} (or --all)");
    }
    Ok(())
}

/// A JSON object of the fields that are set.
fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name.to_owned(), v)))
            .collect(),
    )
}

/// A PATCH body: the fields that are set, at least one of them (`flags` names them).
fn changes(fields: Vec<(&str, Option<Value>)>, flags: &str) -> anyhow::Result<Value> {
    let body = object(fields);
    if body.as_object().is_some_and(Map::is_empty) {
        bail!("nothing to update: pass {flags}");
    }
    Ok(body)
}

/// `--rate-limit` of `endpoints update`: a number, or `None` (`none`) to remove the limit.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit(Option<u32>);

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(RateLimit(None));
    }
    s.parse::<u32>()
        .map(|n| RateLimit(Some(n)))
        .map_err(|_| "a whole number of deliveries per second, or none".to_owned())
}

fn text(value: Option<String>) -> Option<Value> {
    value.map(Value::String)
}

/// `--attributes` parsed as JSON; the server judges whether it is an acceptable object.
fn parse_object(text: Option<String>) -> anyhow::Result<Option<Value>> {
    text.map(|t| serde_json::from_str(&t).context("--attributes is not JSON"))
        .transpose()
}

fn cell_u64(v: &Value) -> String {
    v.as_u64().map_or_else(|| "?".to_owned(), |n| n.to_string())
}
