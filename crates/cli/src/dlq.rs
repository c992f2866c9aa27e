//! `switchyard dlq list|show|redrive`: the dead letters of the work and notify queues.
//!
//! Two places to act on, the same answers from both:
//! - the embedded backend under `--data-dir` (the default): the use-cases of
//!   `switchyard_engine::deadletters` over the SQLite queues, in this process;
//! - a running API with `--api URL` (`switchyard dev` on either backend, or the deployed
//!   intake function): its operator routes (`/v1/ops/dead-letters…`) with the operator key in
//!   `SWITCHYARD_OPERATOR_KEY`. That is how the SQS dead-letter queues of a deployment are
//!   listed and redriven.

use crate::exit::{self, UsageError};
use crate::local::Local;
use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use switchyard_core::ports::{Inbox, QueueName};
use switchyard_engine::deadletters::{self, Inboxes, Redriven};
use switchyard_engine::{EngineError, Workflows};

/// The environment variable `--api` reads its operator key from (a key is not a flag: flags
/// end up in shell history and `ps`).
pub const OPERATOR_KEY_VAR: &str = "SWITCHYARD_OPERATOR_KEY";

/// Where the dead letters are.
pub enum Target<'a> {
    Embedded(&'a Path),
    Api(&'a str),
}

/// What to redrive.
pub enum Which {
    All,
    Ids(Vec<String>),
}

fn queue_arg(q: Option<&str>) -> Result<Option<QueueName>> {
    q.map(|q| {
        QueueName::parse(q).ok_or_else(|| {
            UsageError(format!("--queue must be `work` or `notify`, not `{q}`")).into()
        })
    })
    .transpose()
}

fn embedded_inboxes(dir: &Path) -> Result<(Local, Inboxes)> {
    let l = Local::open(dir, Workflows::new())?;
    let work: Arc<dyn Inbox> = Arc::new(l.queue.clone());
    let notify: Arc<dyn Inbox> = Arc::new(l.notify_inbox());
    Ok((l, Inboxes { work, notify }))
}

/// A call to the API's operator routes; a 4xx/5xx answer becomes an error with its message.
async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let key = std::env::var(OPERATOR_KEY_VAR)
        .ok()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            UsageError(format!(
                "--api needs the operator key in {OPERATOR_KEY_VAR} (one of SWITCHYARD_OPERATOR_KEYS)"
            ))
        })?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut req = switchyard_providers::outbound::client_builder()
        .build()
        .context("the HTTP client")?
        .request(method, &url)
        .bearer_auth(key.trim());
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.with_context(|| format!("calling {url}"))?;
    let status = resp.status();
    let text = resp.text().await.context("reading the answer")?;
    let doc: Value = serde_json::from_str(&text)
        .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
    if status.is_success() {
        return Ok(doc);
    }
    let message = doc["error"]["message"].as_str().unwrap_or("no message");
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(EngineError::NotFound(message.to_string()).into());
    }
    Err(anyhow!("{url}: {status}: {message}"))
}

fn query(queue: Option<QueueName>) -> String {
    queue.map_or_else(String::new, |q| format!("?queue={}", q.as_str()))
}

/// `dlq list [--queue work|notify] [--json]`.
pub async fn list(target: Target<'_>, queue: Option<&str>, json: bool) -> Result<i32> {
    let queue = queue_arg(queue)?;
    let doc = match target {
        Target::Embedded(dir) => {
            let (l, inboxes) = embedded_inboxes(dir)?;
            json!({ "dead_letters": deadletters::list(&l.engine, &inboxes, queue).await? })
        }
        Target::Api(base) => {
            let path = format!("/v1/ops/dead-letters{}", query(queue));
            call(base, reqwest::Method::GET, &path, None).await?
        }
    };
    print_doc(&doc, json, crate::render::dead_letters_table)
}

/// `dlq show ID [--queue …] [--json]`.
pub async fn show(target: Target<'_>, id: &str, queue: Option<&str>, json: bool) -> Result<i32> {
    let queue = queue_arg(queue)?;
    let found: Result<Value> = match target {
        Target::Embedded(dir) => {
            let (l, inboxes) = embedded_inboxes(dir)?;
            match deadletters::show(&l.engine, &inboxes, queue, id).await {
                Ok(v) => Ok(serde_json::to_value(v)?),
                Err(e) => Err(e.into()),
            }
        }
        Target::Api(base) => {
            let path = format!("/v1/ops/dead-letters/{id}{}", query(queue));
            call(base, reqwest::Method::GET, &path, None).await
        }
    };
    let doc = match found {
        Ok(d) => d,
        Err(e) if matches!(e.downcast_ref(), Some(EngineError::NotFound(_))) => {
            eprintln!("error: no dead letter {id}");
            return Ok(exit::FAILED);
        }
        Err(e) => return Err(e),
    };
    print_doc(&doc, json, crate::render::dead_letter_detail)
}

/// `dlq redrive [--queue …] (--all | ID…) [--json]`.
pub async fn redrive(
    target: Target<'_>,
    queue: Option<&str>,
    which: Which,
    json: bool,
) -> Result<i32> {
    let queue = queue_arg(queue)?;
    let ids = match &which {
        Which::All => None,
        Which::Ids(ids) if ids.is_empty() => {
            return Err(UsageError("give the dead letters' ids, or --all".into()).into())
        }
        Which::Ids(ids) => Some(ids.as_slice()),
    };
    let done = match target {
        Target::Embedded(dir) => {
            let (_l, inboxes) = embedded_inboxes(dir)?;
            deadletters::redrive(&inboxes, queue, ids).await?
        }
        Target::Api(base) => {
            let mut body = json!({ "all": ids.is_none() });
            if let Some(ids) = ids {
                body = json!({ "ids": ids });
            }
            if let Some(q) = queue {
                body["queue"] = json!(q.as_str());
            }
            let path = "/v1/ops/dead-letters/redrive";
            let doc = call(base, reqwest::Method::POST, path, Some(body)).await?;
            serde_json::from_value::<Redriven>(doc)
                .context("the API's redrive answer is not the documented shape")?
        }
    };
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "redriven: {} to the work queue, {} to the notify queue",
            done.work, done.notify
        );
        if !done.not_found.is_empty() {
            println!("not found: {}", done.not_found.join(", "));
        }
    }
    // Ids no queue held are worth a non-zero status: a script learns its list was stale.
    Ok(if done.not_found.is_empty() {
        exit::SUCCEEDED
    } else {
        exit::FAILED
    })
}

fn print_doc(doc: &Value, json: bool, table: impl Fn(&Value) -> String) -> Result<i32> {
    if json {
        println!("{doc}");
    } else {
        print!("{}", table(doc));
    }
    Ok(exit::SUCCEEDED)
}
