#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use base64::Engine as _;
use serde_json::json;
use switchyard_core::model::Callback;

fn req(model: &str, input: Value, params: Value) -> ModelRequest {
    ModelRequest {
        run_id: "run-1".into(),
        step: "s".into(),
        attempt: 1,
        model: format!("local/{model}"),
        role: Role::Generation,
        instructions: None,
        prompt_version: None,
        input,
        params,
        output_schema: None,
        feedback: Vec::new(),
        timeout_ms: 30_000,
        callback: None,
    }
}

fn with_callback(mut r: ModelRequest) -> ModelRequest {
    let (run_id, step) = (r.run_id.clone(), r.step.clone());
    let url = "http://localhost/webhooks/local?run=run-1&step=s&token=t".into();
    let token = "t".into();
    r.callback = Some(Callback {
        url,
        run_id,
        step,
        token,
    });
    r
}

async fn ok(r: &ModelRequest) -> ModelOutput {
    match LocalProvider::default().invoke(r).await {
        Ok(ModelResponse::Completed(out)) => out,
        other => panic!("{}: expected output, got {other:?}", r.model),
    }
}

/// The normalized output of a successful call.
async fn run(model: &str, input: Value, params: Value) -> Value {
    ok(&req(model, input, params)).await.output
}

async fn err(p: &LocalProvider, r: &ModelRequest) -> StepError {
    match p.invoke(r).await {
        Err(e) => e,
        Ok(other) => panic!("{}: expected an error, got {other:?}", r.model),
    }
}

#[tokio::test]
async fn keyword_classifier_labels_and_confidence() {
    let labels = json!({
        "billing": ["invoice", "refund", "charged twice"],
        "technical": ["error", "crash", "login"],
    });
    #[rustfmt::skip]
    let cases = [
        (json!({"text": "I was Charged Twice and want a REFUND"}), json!(null), "billing", 1.0),
        (json!("App shows an error on login. Also my invoice"), json!(null), "technical", 0.6667),
        (json!("hello there"), json!(null), "other", 0.0),
        (json!("hello there"), json!("general"), "general", 0.0),
        (json!("refund error"), json!(null), "billing", 0.5), // tie: first listed label
        (json!("charged twiceover"), json!(null), "other", 0.0), // whole words only
        (json!({"subject": "crash report"}), json!(null), "technical", 1.0), // no text: JSON
    ];
    for (input, default_label, label, confidence) in cases {
        let params = json!({"labels": labels, "default_label": default_label});
        let out = run("keyword-classifier", input.clone(), params).await;
        assert_eq!(out["label"], label, "{input}");
        assert_eq!(out["confidence"], json!(confidence), "{input}");
    }
    let out = run(
        "keyword-classifier",
        json!("error, crash, refund"),
        json!({ "labels": labels }),
    )
    .await;
    assert_eq!(
        out["scores"],
        json!({"billing": 0.3333, "technical": 0.6667})
    );
}

#[tokio::test]
async fn lexicon_sentiment_with_negation() {
    #[rustfmt::skip]
    let cases = [
        ("Great product, I love it", "positive", 0.6667),
        ("This is not good", "negative", 0.5),
        ("Terrible support and slow replies", "negative", 0.6667),
        ("The box is blue", "neutral", 1.0),
        ("good but bad", "neutral", 0.3333),
        ("I don’t hate it", "positive", 0.5),
    ];
    for (text, label, confidence) in cases {
        let out = run("lexicon-sentiment", json!({ "text": text }), json!({})).await;
        assert_eq!(out["label"], label, "{text}");
        assert_eq!(out["confidence"], json!(confidence), "{text}");
        assert_eq!(out["scores"].as_object().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn extractive_summarizer_keeps_top_sentences_in_order() {
    let text = "Rust is fast. Rust is safe and Rust is fun.\nThe weather was nice yesterday. \
                Memory safety makes Rust popular.";
    #[rustfmt::skip]
    let cases = [
        (json!(null), "Rust is fast. Rust is safe and Rust is fun.".to_string()),
        (json!(1), "Rust is fast.".to_string()),
        (json!(3), "Rust is fast. Rust is safe and Rust is fun. Memory safety makes Rust popular.".into()),
        (json!(10), text.replace('\n', " ")),
    ];
    for (n, expected) in cases {
        let out = ok(&req(
            "extractive-summarizer",
            json!(text),
            json!({ "sentences": n }),
        ))
        .await;
        assert_eq!(out.output["text"], expected, "sentences={n}");
        assert_eq!(out.output["finish_reason"], "stop");
        assert_eq!(out.output["model"], "local/extractive-summarizer");
        let usage = out.usage.unwrap();
        assert_eq!(
            usage.input_tokens,
            (text.chars().count() as u64).div_ceil(4)
        );
        assert_eq!(usage.output_tokens, (expected.len() as u64).div_ceil(4));
        assert_eq!(out.output["usage"]["output_tokens"], usage.output_tokens);
    }
    assert_eq!(
        run("extractive-summarizer", json!(""), json!({})).await["text"],
        ""
    );
}

#[tokio::test]
async fn regex_extractor_entities_with_char_offsets() {
    let text = "Café: mail ann@example.com or call (555) 123-4567 by March 3, 2025; \
                paid $1,200.50 on 2025-03-01, see https://example.com/x.";
    let out = run("regex-extractor", json!({ "text": text }), json!({})).await;
    let entities = out["entities"].as_array().unwrap();
    let got: Vec<(&str, &str)> = entities
        .iter()
        .map(|e| (e["type"].as_str().unwrap(), e["text"].as_str().unwrap()))
        .collect();
    #[rustfmt::skip]
    let expected = [
        ("email", "ann@example.com"), ("phone", "(555) 123-4567"), ("date", "March 3, 2025"),
        ("money", "$1,200.50"), ("date", "2025-03-01"), ("url", "https://example.com/x"),
    ];
    assert_eq!(got, expected);
    // Offsets count characters: "é" is one, although it is two bytes.
    assert_eq!(entities[0]["start"], 11);
    for e in entities {
        let (start, end) = (e["start"].as_u64().unwrap(), e["end"].as_u64().unwrap());
        let slice: String = text
            .chars()
            .skip(start as usize)
            .take((end - start) as usize)
            .collect();
        assert_eq!(e["text"], slice);
    }
    let counts = json!({"email": 1, "url": 1, "phone": 1, "money": 1, "date": 2});
    assert_eq!(out["counts"], counts);

    // Custom patterns extend and override the built-in ones.
    let params = json!({"patterns": {"ticket": "TCK-\\d+", "email": "nothing-matches-this"}});
    let out = run("regex-extractor", json!("ann@x.io about TCK-42"), params).await;
    let ticket = json!([{"type": "ticket", "text": "TCK-42", "start": 15, "end": 21}]);
    assert_eq!(out["entities"], ticket);
    assert_eq!(out["counts"]["email"], 0);
    assert_eq!(
        text::default_pattern_count(),
        5,
        "every built-in pattern compiles"
    );
}

#[tokio::test]
async fn template_generator_renders_context_and_parses_json() {
    let template = "{% if feedback %}Fix: {{ feedback|join('; ') }}. {% endif %}\
                    Hello {{ input.name }} (attempt {{ attempt }}): {{ instructions }}";
    let ada = json!({"name": "Ada"});
    let mut r = req(
        "template-generator",
        ada.clone(),
        json!({ "template": template }),
    );
    r.instructions = Some("Be brief".into());
    assert_eq!(
        ok(&r).await.output["text"],
        "Hello Ada (attempt 1): Be brief"
    );
    r.attempt = 2;
    r.feedback = vec!["too long".into(), "missing name".into()];
    let out = ok(&r).await.output;
    assert_eq!(
        out["text"],
        "Fix: too long; missing name. Hello Ada (attempt 2): Be brief"
    );
    assert!(out.get("json").is_none());

    let template = r#"{"name": {{ input.name|tojson }}, "n": {{ attempt }}}"#;
    let out = run(
        "template-generator",
        ada,
        json!({"template": template, "format": "json"}),
    )
    .await;
    assert_eq!(out["json"], json!({"name": "Ada", "n": 1}));

    // An output schema asks for JSON too; text that does not parse is Malformed.
    let mut r = req(
        "template-generator",
        json!({}),
        json!({"template": "not json"}),
    );
    r.output_schema = Some(json!({"type": "object"}));
    let e = err(&LocalProvider::default(), &r).await;
    assert_eq!(e.class, ErrorClass::Malformed);
    assert!(e.details[0].contains("expected"), "{:?}", e.details);

    let r = req(
        "template-generator",
        json!({}),
        json!({"template": "{% if %}"}),
    );
    let e = err(&LocalProvider::default(), &r).await;
    assert_eq!(e.class, ErrorClass::Invalid);
    assert!(
        e.message.contains("params.template failed to render"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn echo_returns_input() {
    for (input, text) in [
        (json!("hi"), "hi"),
        (json!({"a": [1, 2]}), r#"{"a":[1,2]}"#),
    ] {
        let out = ok(&req("echo", input.clone(), json!({}))).await;
        assert_eq!(
            (&out.output["text"], &out.output["json"]),
            (&json!(text), &input)
        );
        assert_eq!(out.cost_usd, 0.0);
    }
}

fn corpus() -> Value {
    json!([
        {"id": "a", "title": "Refund policy", "text": "Refunds are issued within 14 days."},
        {"id": "b", "title": "Shipping", "text": "We ship worldwide. Shipping takes 5 days."},
        {"id": "c", "title": "Refund exceptions",
         "text": "Digital goods: refund only if broken. Refund requests need an order number."},
        {"id": "d", "text": "Join our team."},
    ])
}

#[tokio::test]
async fn keyword_retriever_ranks_and_cites() {
    #[rustfmt::skip]
    let cases = [
        (json!({"query": "refund for a broken order"}), json!(null), vec!["c", "a"]),
        (json!({"text": "refund for a broken order"}), json!(1), vec!["c"]),
        (json!("how long does shipping take"), json!(null), vec!["b"]),
        (json!("quantum chromodynamics"), json!(null), vec![]),
    ];
    for (input, top_k, ids) in cases {
        let params = json!({"documents": corpus(), "top_k": top_k});
        let out = ok(&req("keyword-retriever", input.clone(), params)).await;
        assert_eq!(out.sources, ids, "{input}");
        let docs = out.output["documents"].as_array().unwrap();
        let listed: Vec<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(listed, ids);
        assert!(docs
            .windows(2)
            .all(|w| w[0]["score"].as_f64() >= w[1]["score"].as_f64()));
    }
    // Equal scores are ordered by id.
    let docs = json!([{"id": "x2", "text": "same words"}, {"id": "x1", "text": "same words"}]);
    let out = ok(&req(
        "keyword-retriever",
        json!("words"),
        json!({ "documents": docs }),
    ))
    .await;
    assert_eq!(out.sources, ["x1", "x2"]);
    assert_eq!(out.output["query"], "words");
    assert_eq!(out.output["documents"][0]["title"], "");
}

#[tokio::test]
async fn async_job_schedules_callback_and_poll_agrees() {
    let p = LocalProvider::default();
    let e = err(&p, &req("async-job", json!({"title": "Hi"}), json!({}))).await;
    assert_eq!(
        (e.class, e.message.as_str()),
        (ErrorClass::Invalid, "async model needs a callback")
    );

    let input = json!({"title": "Q3 <report>", "text": "Revenue up"});
    let r = with_callback(req("async-job", input.clone(), json!({"delay_ms": 10})));
    let Ok(ModelResponse::Pending {
        job_id,
        poll_after_ms,
    }) = p.invoke(&r).await
    else {
        panic!("expected a pending job");
    };
    assert_eq!(job_id, async_job::job_id(&r));
    assert!(job_id.starts_with("job_") && job_id.len() == 20);
    assert_eq!(poll_after_ms, Some(1000));

    let scheduled = p.take_scheduled();
    assert!(p.take_scheduled().is_empty(), "take_scheduled drains");
    let [cb] = scheduled.as_slice() else {
        panic!("one callback expected, got {scheduled:?}");
    };
    assert_eq!((cb.delay_ms, cb.provider.as_str()), (10, "local"));
    assert_eq!(cb.url, r.callback.as_ref().unwrap().url);
    assert!(cb.webhook_id.starts_with("msg_"));
    assert_eq!(
        (&cb.body["id"], &cb.body["status"]),
        (&json!(job_id), &json!("succeeded"))
    );
    assert_eq!(cb.body["metrics"]["predict_time"], 0.01);

    let (cb_job, from_callback) = p.parse_callback("local/async-job", &cb.body).unwrap();
    assert_eq!(cb_job, job_id);
    let from_poll = p.poll(&r, &job_id).await.unwrap();
    assert_eq!(from_callback, from_poll);
    let ModelResponse::Completed(out) = from_poll else {
        panic!("poll should complete");
    };
    assert_eq!(out.model, "local/async-job");
    assert!(out.cost_usd > 0.0);
    let asset = &out.output;
    let b64 = asset["url"]
        .as_str()
        .unwrap()
        .strip_prefix("data:image/svg+xml;base64,");
    let svg = base64::engine::general_purpose::STANDARD
        .decode(b64.unwrap())
        .unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains("Q3 &lt;report&gt;") && svg.contains("Revenue up"),
        "{svg}"
    );
    assert_eq!(asset["content_type"], "image/svg+xml");
    assert_eq!(asset["bytes"], svg.len());
    assert_eq!(asset["sha256"], sha256_hex(svg.as_bytes()));

    // Never calling back leaves only the polling path; the result is the same.
    for never in [json!(false), json!("never")] {
        let params = json!({ "callback": never, "delay_ms": 10 });
        let quiet = with_callback(req("async-job", input.clone(), params));
        assert!(matches!(
            p.invoke(&quiet).await,
            Ok(ModelResponse::Pending { .. })
        ));
        assert!(p.take_scheduled().is_empty());
        let polled = p.poll(&quiet, &job_id).await.unwrap();
        assert_eq!(polled, ModelResponse::Completed(out.clone()));
    }

    let mut next = r.clone();
    next.attempt = 2;
    assert_ne!(async_job::job_id(&next), job_id);
    assert_eq!(
        p.poll(&next, &job_id).await.unwrap_err().class,
        ErrorClass::Invalid
    );
    let sync = req("echo", json!(1), json!({}));
    assert_eq!(
        p.poll(&sync, &job_id).await.unwrap_err().class,
        ErrorClass::Invalid
    );
}

#[test]
fn parse_callback_statuses() {
    let p = LocalProvider::default();
    let pending = p
        .parse_callback(
            "local/async-job",
            &json!({"id": "j", "status": "processing"}),
        )
        .unwrap();
    let expected = ModelResponse::Pending {
        job_id: "j".into(),
        poll_after_ms: None,
    };
    assert_eq!(pending, ("j".to_string(), expected));
    let ok_head = json!({"id": "j", "status": "succeeded", "model": "local/async-job"});
    let bad_metrics = json!({"id": "j", "status": "succeeded", "model": "m", "output": {},
                             "metrics": {"input_token_count": "many"}});
    #[rustfmt::skip]
    let failures = [
        (json!({"id": "j", "status": "failed", "error": "nsfw", "error_class": "refused"}),
            ErrorClass::Refused, "nsfw"),
        (json!({"id": "j", "status": "canceled"}), ErrorClass::Transient, "job j canceled"),
        (json!({"id": "j", "status": "failed", "error_class": "bogus"}), ErrorClass::Transient, "job j failed"),
        (json!({"status": "succeeded"}), ErrorClass::Malformed, "callback body: `id` must be a string"),
        (json!({"id": 7, "status": "succeeded"}), ErrorClass::Malformed, "callback body: `id` must be a string"),
        (json!({"id": "j", "status": "weird"}), ErrorClass::Malformed, "callback body: unknown status `weird`"),
        (ok_head, ErrorClass::Malformed, "callback body: `output` must be an object"),
        (bad_metrics, ErrorClass::Malformed, "callback body: `metrics.input_token_count` must be an integer"),
    ];
    for (body, class, message) in failures {
        let e = p.parse_callback("local/async-job", &body).unwrap_err();
        assert_eq!((e.class, e.message.as_str()), (class, message), "{body}");
    }
}

#[tokio::test(start_paused = true)]
async fn fault_kinds_map_to_classes_and_honour_attempts() {
    let p = LocalProvider::default();
    for kind in faults::KINDS {
        let mut r = req(
            "lexicon-sentiment",
            json!("good"),
            json!({"fault": {"kind": kind}}),
        );
        let started = tokio::time::Instant::now();
        let e = err(&p, &r).await;
        assert_eq!(e.class, kind);
        match kind {
            // Outlasts the request's own 30 s deadline (paused time: no real wait).
            ErrorClass::Timeout => assert!(started.elapsed() >= Duration::from_millis(30_100)),
            ErrorClass::RateLimited => assert_eq!(e.retry_after_ms, Some(1000)),
            ErrorClass::Malformed => assert_eq!(e.details, ["output was not valid JSON"]),
            _ => assert_eq!(e.retry_after_ms, None),
        }
        r.attempt = 2;
        assert!(p.invoke(&r).await.is_ok(), "{kind}: times defaults to 1");
    }

    // `times`, `retry_after_ms`, and the model filter that lets a fallback model succeed.
    let fault =
        json!({"kind": "rate_limited", "times": 2, "retry_after_ms": 250, "model": "local/echo"});
    #[rustfmt::skip]
    let cases = [("echo", 1, true), ("echo", 2, true), ("echo", 3, false), ("lexicon-sentiment", 1, false)];
    for (model, attempt, fails) in cases {
        let mut r = req(model, json!("x"), json!({ "fault": fault }));
        r.attempt = attempt;
        match p.invoke(&r).await {
            Err(e) => assert!(
                fails && e.retry_after_ms == Some(250),
                "{model} {attempt}: {e}"
            ),
            Ok(_) => assert!(!fails, "{model} {attempt} should fail"),
        }
    }
}

#[tokio::test]
async fn fault_table_by_step() {
    let faults = parse_faults("s=quota_exhausted:2").unwrap();
    let p = LocalProvider::new(LocalConfig {
        faults,
        ..LocalConfig::default()
    });
    let mut r = req("echo", json!("x"), json!({}));
    assert_eq!(err(&p, &r).await.class, ErrorClass::QuotaExhausted);
    // The step's own params.fault takes precedence over the table.
    r.params = json!({"fault": {"kind": "auth"}});
    assert_eq!(err(&p, &r).await.class, ErrorClass::Auth);
    r.params = json!({});
    r.attempt = 3;
    assert!(p.invoke(&r).await.is_ok());
    r.attempt = 1;
    r.step = "other".into();
    assert!(p.invoke(&r).await.is_ok());
}

#[test]
fn parse_faults_specs() {
    let faults = parse_faults("classify=transient:2, draft=malformed:1,enrich=timeout,").unwrap();
    assert_eq!(faults.len(), 3);
    assert_eq!(faults["classify"], Fault::new(ErrorClass::Transient, 2));
    assert_eq!(faults["draft"], Fault::new(ErrorClass::Malformed, 1));
    assert_eq!(faults["enrich"], Fault::new(ErrorClass::Timeout, 1));
    assert!(parse_faults("  ").unwrap().is_empty());
    #[rustfmt::skip]
    let bad = [
        ("classify", "expected step=kind[:times]"),
        ("=transient", "step id is empty"),
        ("a=boom", "unknown kind `boom`"),
        ("a=budget_exceeded", "unknown kind `budget_exceeded`"),
        ("a=transient:0", "times must be a positive integer"),
        ("a=transient:x", "times must be a positive integer"),
        ("a=transient,a=timeout", "listed twice"),
    ];
    for (spec, message) in bad {
        let e = parse_faults(spec).unwrap_err();
        assert!(e.contains(message), "{spec}: {e}");
    }
}

#[tokio::test]
async fn unknown_models_and_bad_params_are_invalid() {
    #[rustfmt::skip]
    let cases = [
        ("gpt-5", json!({}), "unknown model `local/gpt-5`"),
        ("echo", json!([1]), "params must be a map"),
        ("keyword-classifier", json!({}), "params.labels must be a map"),
        ("keyword-classifier", json!({"labels": ["a"]}), "params.labels must be a map"),
        ("keyword-classifier", json!({"labels": {"a": "x"}}), "params.labels.a is not a list"),
        ("keyword-classifier", json!({"labels": {"a": [1]}}), "params.labels.a[0]"),
        ("keyword-classifier", json!({"labels": {"a": ["x"]}, "default_label": 5}), "params.default_label"),
        ("extractive-summarizer", json!({"sentences": 0}), "params.sentences must be a positive"),
        ("regex-extractor", json!({"patterns": ["x"]}), "params.patterns must be a map"),
        ("regex-extractor", json!({"patterns": {"bad": "("}}), "params.patterns.bad is not a valid regex"),
        ("regex-extractor", json!({"patterns": {"n": 1}}), "params.patterns.n must be a regex string"),
        ("template-generator", json!({}), "params.template must be a string"),
        ("template-generator", json!({"template": "x", "format": "xml"}), "params.format"),
        ("keyword-retriever", json!({"documents": {}}), "params.documents must be a list"),
        ("keyword-retriever", json!({"documents": [{"id": "a"}]}), "params.documents[0].text"),
        ("keyword-retriever", json!({"documents": [], "top_k": "3"}), "params.top_k"),
        ("echo", json!({"delay_ms": -1}), "params.delay_ms"),
        ("echo", json!({"fault": {"kind": "boom"}}), "params.fault.kind must be one of"),
        ("echo", json!({"fault": {"kind": "auth", "times": "x"}}), "params.fault.times"),
        ("async-job", json!({"callback": "sometimes"}), "params.callback"),
        ("lexicon-moderation", json!({"threshold": 0}), "params.threshold must be a positive"),
        ("lexicon-moderation", json!({"threshold": "2"}), "params.threshold must be a positive"),
        ("lexicon-moderation", json!({"lexicon": ["kill"]}), "params.lexicon must be a map"),
        ("lexicon-moderation", json!({"lexicon": {"spam": "buy now"}}), "params.lexicon.spam is not a list"),
        ("lexicon-moderation", json!({"lexicon": {"spam": ["ok", 3]}}), "params.lexicon.spam[1]"),
        ("lexicon-moderation", json!({"lexicon": {"spam": ["..."]}}), "params.lexicon.spam[0]"),
        ("lexicon-moderation", json!({"lexicon": {" ": ["x"]}}), "a category name is empty"),
    ];
    let p = LocalProvider::default();
    for (model, params, message) in cases {
        let e = err(&p, &with_callback(req(model, json!("x"), params))).await;
        assert_eq!(e.class, ErrorClass::Invalid, "{model}: {e}");
        assert!(e.message.contains(message), "{model}: {e}");
    }
    let mut other_provider = req("echo", json!("x"), json!({}));
    other_provider.model = "openai/echo".into();
    assert!(err(&p, &other_provider)
        .await
        .message
        .contains("openai/echo"));
}

#[tokio::test]
async fn estimate_is_at_least_actual_cost() {
    let long = "Word salad. ".repeat(40);
    let loop_template = "{% for i in range(200) %}x{% endfor %}";
    #[rustfmt::skip]
    let cases = [
        ("keyword-classifier", json!({"text": long}), json!({"labels": {"w": ["word"]}})),
        ("lexicon-sentiment", json!("good, great"), json!({})),
        ("extractive-summarizer", json!(long), json!({"sentences": 50})),
        ("extractive-summarizer", json!({"text": "A b. C d.", "noise": 1}), json!({})),
        ("regex-extractor", json!("mail a@b.co"), json!({})),
        ("template-generator", json!({"n": 3}), json!({"template": loop_template})),
        ("keyword-retriever", json!({"query": "refund"}), json!({"documents": corpus()})),
        ("echo", json!({"a": 1}), json!({})),
        ("lexicon-moderation", json!({"text": "kill kill the idiot"}), json!({})),
    ];
    let p = LocalProvider::default();
    for (model, input, params) in cases {
        let mut r = req(model, input, params);
        r.instructions = Some("Answer briefly.".into());
        let out = ok(&r).await;
        let estimate = p.estimate_cost_usd(&r);
        assert!(
            estimate >= out.cost_usd,
            "{model}: {estimate} < {}",
            out.cost_usd
        );
        assert_eq!(out.cost_usd > 0.0, model != "echo", "{model} is priced");
    }
    let r = with_callback(req("async-job", json!({"title": "t"}), json!({})));
    let Ok(ModelResponse::Pending { job_id, .. }) = p.invoke(&r).await else {
        panic!("pending expected");
    };
    let Ok(ModelResponse::Completed(out)) = p.poll(&r, &job_id).await else {
        panic!("completed expected");
    };
    assert!(p.estimate_cost_usd(&r) >= out.cost_usd && out.cost_usd > 0.0);
    assert_eq!(p.estimate_cost_usd(&req("nope", json!(1), json!({}))), 0.0);
}

#[tokio::test(start_paused = true)]
async fn delay_ms_simulates_latency() {
    for delay in [0u64, 1500] {
        let started = tokio::time::Instant::now();
        ok(&req("echo", json!("x"), json!({ "delay_ms": delay }))).await;
        assert_eq!(started.elapsed(), Duration::from_millis(delay));
    }
}

#[tokio::test]
async fn outputs_carry_model_and_stable_request_ids() {
    let r = req("echo", json!("x"), json!({}));
    let (a, b) = (ok(&r).await, ok(&r).await);
    assert_eq!(a, b);
    assert_eq!(a.model, "local/echo");
    let id = a.provider_request_id.unwrap();
    assert!(id.starts_with("local-") && id.len() == 18, "{id}");
    let mut next = r.clone();
    next.attempt = 2;
    assert_ne!(ok(&next).await.provider_request_id, Some(id));
}

#[test]
fn model_list_and_price_table() {
    let p = LocalProvider::default();
    let models = p.models();
    assert_eq!((p.name(), models.len()), ("local", 11));
    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
    let priced: Vec<&str> = price_table().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(ids, priced);
    for m in &models {
        assert!(m.id.starts_with("local/") && !m.description.is_empty());
        assert_eq!(m.asynchronous, m.id == "local/async-job");
        assert_eq!(m.roles.len(), 1);
    }
    // The estimate bounds output tokens only for these two; every other model must bill input only.
    for spec in MODELS.iter().filter(|s| s.usd_per_1k_out > 0.0) {
        let bounded = matches!(
            spec.algo,
            Algo::ExtractiveSummarizer | Algo::TemplateGenerator
        );
        assert!(bounded, "{}", spec.id);
    }
}

/// The categories of a moderation output that are flagged.
fn flagged_categories(out: &Value) -> Vec<String> {
    out["categories"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.as_bool() == Some(true))
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test]
async fn lexicon_moderation_flags_categories() {
    assert!(moderation::builtin_lexicon_is_well_formed());
    let all = moderation::builtin_categories();
    assert_eq!(
        all,
        [
            "harassment",
            "hate",
            "illicit",
            "self_harm",
            "sexual",
            "violence"
        ]
    );
    #[rustfmt::skip]
    let cases: Vec<(Value, Value, Vec<&str>, Value)> = vec![
        // (input, params, flagged categories, scores that are not 0)
        (json!("Have a lovely day"), json!({}), vec![], json!({})),
        (json!({"text": "I will KILL you, you Idiot!"}), json!({}), vec!["harassment", "violence"],
            json!({"harassment": 0.5, "violence": 0.5})),
        // Whole words only, no stemming: "killer" and "skill" are not "kill".
        (json!("a killer app, real skill"), json!({}), vec![], json!({})),
        // Phrases across punctuation; "self-harm" is the words "self harm".
        (json!("thoughts of self-harm; I want to die"), json!({}), vec!["self_harm"],
            json!({"self_harm": 0.6667})),
        // Two hits give 2/3; the threshold counts hits.
        (json!("kill, then kill again"), json!({"threshold": 2}), vec!["violence"],
            json!({"violence": 0.6667})),
        (json!("kill the idiot"), json!({"threshold": 2}), vec![],
            json!({"harassment": 0.5, "violence": 0.5})),
        // A custom category is added; a named built-in one is replaced; [] removes one.
        (json!("Buy now! Click here to kill time"),
            json!({"lexicon": {"spam": ["buy now", "click here"], "violence": ["murder"], "sexual": []}}),
            vec!["spam"], json!({"spam": 0.6667})),
        // Structured input without `text` is judged as its JSON.
        (json!({"comment": "you moron"}), json!({}), vec!["harassment"], json!({"harassment": 0.5})),
    ];
    for (input, params, flagged, nonzero) in cases {
        let removed = params["lexicon"]["sexual"] == json!([]);
        let custom = params["lexicon"]["spam"].is_array();
        let out = ok(&req("lexicon-moderation", input.clone(), params.clone())).await;
        let o = &out.output;
        assert_eq!(flagged_categories(o), flagged, "{input} {params}");
        assert_eq!(
            o["flagged"],
            !flagged.is_empty(),
            "{input}: flagged iff a category is"
        );
        assert_eq!(o["model"], "local/lexicon-moderation");
        let keys: Vec<&String> = o["categories"].as_object().unwrap().keys().collect();
        let mut expected: Vec<String> = all
            .iter()
            .filter(|c| !(removed && **c == "sexual"))
            .map(|c| c.to_string())
            .collect();
        if custom {
            expected.push("spam".into());
        }
        expected.sort();
        assert_eq!(
            keys,
            expected.iter().collect::<Vec<_>>(),
            "{input}: every category, sorted"
        );
        let scores = o["scores"].as_object().unwrap();
        assert_eq!(scores.len(), keys.len(), "{input}");
        let got_nonzero: serde_json::Map<String, Value> = scores
            .iter()
            .filter(|(_, v)| v.as_f64() != Some(0.0))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(Value::Object(got_nonzero), nonzero, "{input}");
        // Input tokens only, at the simulated price.
        let usage = out.usage.unwrap();
        assert!(usage.input_tokens > 0 && out.cost_usd > 0.0, "{input}");
        assert!((out.cost_usd - usage.input_tokens as f64 / 1000.0 * 0.0001).abs() < 1e-15);
    }
}

#[tokio::test(start_paused = true)]
async fn lexicon_moderation_takes_the_fault_switch_and_delay() {
    let p = LocalProvider::default();
    let mut r = req(
        "lexicon-moderation",
        json!("kill"),
        json!({"fault": {"kind": "rate_limited", "retry_after_ms": 300}}),
    );
    r.role = Role::Moderation;
    let e = err(&p, &r).await;
    assert_eq!(
        (e.class, e.retry_after_ms),
        (ErrorClass::RateLimited, Some(300))
    );
    r.attempt = 2;
    let started = tokio::time::Instant::now();
    r.params = json!({"delay_ms": 700});
    let out = ok(&r).await;
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    assert_eq!(out.output["flagged"], true);
    let info = p
        .models()
        .into_iter()
        .find(|m| m.id == "local/lexicon-moderation")
        .unwrap();
    assert_eq!(info.roles, [Role::Moderation]);
    assert!(!info.asynchronous);
}

/// Which built-in calls are free to repeat (not claimed before they start): the computed
/// models, not the asynchronous job, nothing unknown, and nothing with `claim_calls`.
#[test]
fn built_in_calls_are_free_to_repeat_but_the_job_and_claimed_ones() {
    let free = LocalProvider::new(LocalConfig::default());
    let claiming = LocalProvider::new(LocalConfig {
        claim_calls: true,
        ..LocalConfig::default()
    });
    // (model, free by default)
    let table = [
        ("local/template-generator", true),
        ("local/keyword-classifier", true),
        ("local/rules-judge", true),
        ("local/async-job", false),
        ("local/no-such-model", false),
    ];
    for (model, want) in table {
        assert_eq!(free.repeat_is_free(model), want, "{model}");
        assert!(!claiming.repeat_is_free(model), "{model} with claim_calls");
    }
}
