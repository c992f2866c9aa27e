//! Client uploads through the engine ([`switchyard_core::upload`] has the rules): declaring
//! one (a presigned PUT), receiving its bytes where this process serves the PUT itself,
//! adopting the references of a run input at its start, and reading them back where data
//! leaves for a model.

use crate::{Engine, EngineError};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;
use switchyard_core::model::ModelRequest;
use switchyard_core::upload::{self, Declared};
use switchyard_core::{ErrorClass, StepError, StoreError};

/// The answer to a declared upload: where to PUT the bytes, and what to put in a run input.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadTicket {
    /// `{"$upload": "<sha256>"}`: put it in a run's input where the content belongs.
    pub reference: Value,
    /// `PUT`.
    pub method: &'static str,
    pub url: String,
    /// Send every one of these with the PUT (the signature covers them).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch after which the URL no longer takes the upload.
    pub expires_at: u64,
    /// What the store will hold it to.
    pub sha256: String,
    pub bytes: u64,
    pub content_type: String,
}

/// Why reading a model step's uploads did not produce its input.
pub(crate) enum ReadFail {
    /// The step cannot have it (missing or damaged upload, content not of its type).
    Step(StepError),
    /// The store failed: not the step's fault, the wake-up is retried.
    Store(StoreError),
}

impl Engine {
    /// Checks a declaration and presigns its PUT (valid [`upload::PUT_TTL_MS`]).
    pub async fn declare_upload(
        &self,
        tenant: &str,
        declared: Declared,
    ) -> Result<UploadTicket, EngineError> {
        declared
            .check(upload::MAX_BYTES)
            .map_err(|r| EngineError::BadRequest {
                field: Some(r.field.to_string()),
                message: format!("{}: {}", r.field, r.message),
            })?;
        let put = self
            .blobs
            .presign_upload(tenant, &declared, upload::PUT_TTL_MS)
            .await?;
        tracing::info!(tenant, sha256 = %declared.sha256, bytes = declared.bytes, "upload declared");
        Ok(UploadTicket {
            reference: serde_json::json!({upload::REF_KEY: declared.sha256}),
            method: "PUT",
            url: put.url,
            headers: put.headers.into_iter().collect(),
            expires_at: self.now().saturating_add(upload::PUT_TTL_MS),
            sha256: declared.sha256,
            bytes: declared.bytes,
            content_type: declared.content_type,
        })
    }

    /// Stores the bytes of a PUT this process serves (`switchyard dev`), after the caller
    /// checked its link. Other bytes than the declared ones are a 400 and store nothing.
    pub async fn receive_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        bytes: &[u8],
    ) -> Result<(), EngineError> {
        self.blobs
            .accept_upload(tenant, declared, bytes)
            .await
            .map_err(|e| match e {
                StoreError::Invalid(message) => EngineError::BadRequest {
                    field: None,
                    message,
                },
                other => other.into(),
            })
    }

    /// Adopts every upload a run input references and rewrites each reference with what was
    /// stored (`{"$upload", "bytes", "content_type"}`). A reference to nothing this tenant
    /// uploaded is a 422 naming its field; nothing is written for the run before this passes.
    pub(crate) async fn adopt_uploads(
        &self,
        tenant: &str,
        mut input: Value,
    ) -> Result<Value, EngineError> {
        let refs = upload::references(&input);
        if refs.is_empty() {
            return Ok(input);
        }
        if refs.len() > upload::MAX_REFS_PER_INPUT {
            return Err(EngineError::InvalidInput {
                field: Some("input".into()),
                message: format!(
                    "the input references {} uploads; at most {} are allowed",
                    refs.len(),
                    upload::MAX_REFS_PER_INPUT
                ),
            });
        }
        let mut adopted = std::collections::HashMap::new();
        for (path, sha) in refs {
            let field = if path.is_empty() {
                "input".to_string()
            } else {
                format!("input.{path}")
            };
            if adopted.contains_key(&sha) {
                continue;
            }
            let found = match self.blobs.adopt_upload(tenant, &sha).await {
                Ok(d) => d,
                Err(StoreError::NotFound(_)) => {
                    return Err(EngineError::InvalidInput {
                        field: Some(field),
                        message: format!(
                            "upload {sha:?} was not found: declare it with POST /v1/uploads and \
                             PUT its bytes before starting the run (uploads not used by a run \
                             are deleted after a few days)"
                        ),
                    })
                }
                Err(StoreError::Invalid(message)) => {
                    return Err(EngineError::InvalidInput {
                        field: Some(field),
                        message,
                    })
                }
                Err(e) => return Err(e.into()),
            };
            adopted.insert(sha, found);
        }
        upload::replace::<()>(&mut input, &mut |sha, _| {
            Ok(adopted
                .get(sha)
                .map(Declared::reference)
                .unwrap_or(Value::Null))
        })
        .map_err(|()| EngineError::Internal("upload references changed".into()))?;
        Ok(input)
    }

    /// Replaces, in a model request's `input` and `params`, each reference the run's own input
    /// adopted by the upload's content ([`upload::decode`]). A reference anywhere else (a
    /// model's output that merely looks like one) is left as it is: only what the run's
    /// tenant uploaded is ever read.
    pub(crate) async fn read_uploads(
        &self,
        run_input: &Value,
        req: &mut ModelRequest,
    ) -> Result<(), ReadFail> {
        let own: std::collections::HashMap<String, String> =
            upload::adopted(run_input).into_iter().collect();
        if own.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<String> = [&req.input, &req.params]
            .iter()
            .flat_map(|v| upload::references(v))
            .map(|(_, sha)| sha)
            .filter(|sha| own.contains_key(sha))
            .collect();
        let mut contents = std::collections::HashMap::new();
        for sha in wanted {
            let bytes = self.blobs.get(&sha).await.map_err(|e| match e {
                StoreError::NotFound(_) | StoreError::Corrupt(_) => ReadFail::Step(StepError::new(
                    ErrorClass::Invalid,
                    format!("upload {sha}: {e}"),
                )),
                other => ReadFail::Store(other),
            })?;
            let ct = own.get(&sha).map(String::as_str).unwrap_or("");
            let value = upload::decode(ct, &bytes).map_err(|m| {
                ReadFail::Step(StepError::new(
                    ErrorClass::Invalid,
                    format!("upload {sha}: {m}"),
                ))
            })?;
            contents.insert(sha, value);
        }
        for v in [&mut req.input, &mut req.params] {
            upload::replace::<()>(v, &mut |sha, m| {
                Ok(contents
                    .get(sha)
                    .cloned()
                    .unwrap_or_else(|| Value::Object(m.clone())))
            })
            .map_err(|()| ReadFail::Store(StoreError::Corrupt("upload references".into())))?;
        }
        Ok(())
    }
}
