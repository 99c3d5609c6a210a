//! The pages people answer human tasks on, without an API key: reached from the magic link
//! of a task email (`/tasks/link/{token}`), or from the task list of a person signed in by an
//! emailed sign-in link (`/tasks`, `/tasks/{intent_id}`).
//!
//! Owns the routes, who may answer by email, spending links, sessions and the audit record of
//! web answers. Opening a link (GET) changes nothing, so that mail scanners that follow links
//! spend nothing; the answer is the form's POST. Task rules are `crate::intent::human_task`'s;
//! tokens are [`link`]'s; the HTML is [`pages`]'; the text of a submission is [`form`]'s.
//!
//! Who may answer by email: the task's `notify_email` and email assignees, and the people
//! `[email.contacts]` names for the addresses that may answer through the API (handler,
//! `escalate_to`, agent assignees).

pub mod form;
pub mod link;
pub mod pages;

use std::path::PathBuf;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::Markup;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api::AppState;
use crate::clock::{now_rfc3339, now_unix_ms};
use crate::intent::{Decision, HumanTask, IntentRecord, TaskError};
use crate::store::{MailAbout, MailJob, Recipient, Session, StoreError, StoredIntent};
use form::{Attachment, Submission};
use link::{Claims, LinkError, Purpose};

const SESSION_COOKIE: &str = "axp_session";
/// Largest page submission, files included.
const MAX_SUBMISSION: usize = 12 * 1024 * 1024;
/// Sign-in mails one address may be sent, at most one per this long.
const SIGN_IN_INTERVAL_MS: u64 = 60_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/tasks", get(list))
        .route("/tasks/sign-in", post(request_sign_in))
        .route("/tasks/sign-in/{token}", get(show_sign_in).post(sign_in))
        .route("/tasks/sign-out", post(sign_out))
        .route("/tasks/link/{token}", get(show_by_link).post(answer_by_link))
        .route("/tasks/{intent_id}", get(show_in_session).post(answer_in_session))
        .layer(DefaultBodyLimit::max(MAX_SUBMISSION))
}

/// A page and its status, with the headers every task page carries.
struct Page(StatusCode, Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.0, axum::response::Html(self.1.into_string())).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
        );
        response
    }
}

fn message(status: StatusCode, title: &str, text: &str) -> Page {
    Page(status, pages::message(title, text, None))
}

/// Why a page cannot show or take an answer.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("used")]
    Spent { at: String },
    #[error("not found")]
    NotFound,
    #[error("closed")]
    Closed { record: Box<IntentRecord> },
    #[error("not yours")]
    NotYours,
    #[error("moved")]
    Moved,
    #[error(transparent)]
    Invalid(TaskError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refusal {
    fn page(&self) -> Page {
        match self {
            Refusal::Link(LinkError::Expired) => message(
                StatusCode::GONE,
                "This link has expired",
                "Links in task emails work for a limited time. Ask for a new one, or sign in to your task list.",
            ),
            Refusal::Link(LinkError::BadSignature | LinkError::Malformed) => message(
                StatusCode::BAD_REQUEST,
                "This link is not valid",
                "The link was changed or cut off on its way. Open it from the email again, copying all of it.",
            ),
            Refusal::Spent { at } => message(
                StatusCode::GONE,
                "This link was already used",
                &format!(
                    "An answer was recorded with this link at {at}. Each link works once; nothing was changed now."
                ),
            ),
            Refusal::NotFound => message(StatusCode::NOT_FOUND, "No such task", "This node has no task here."),
            Refusal::Closed { record } => message(
                StatusCode::CONFLICT,
                "This task is no longer open",
                &format!("The intent is {} now; nothing was changed.", record.status()),
            ),
            Refusal::NotYours => message(
                StatusCode::FORBIDDEN,
                "Not your task",
                "This task is not assigned to the address you are signed in as.",
            ),
            Refusal::Moved => message(
                StatusCode::CONFLICT,
                "This task moved",
                "The task is now handled on another node; use the link of the newest email about it.",
            ),
            Refusal::Invalid(error) => message(StatusCode::UNPROCESSABLE_ENTITY, "Not recorded", &error.to_string()),
            Refusal::Store(error) => {
                tracing::error!(%error, "a task page could not read or write the store");
                message(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly", "The node could not record this now.")
            }
        }
    }
}

/// The email addresses that may answer the intent's task here.
fn email_answerers(state: &AppState, record: &IntentRecord, task: &HumanTask) -> Vec<String> {
    let mut emails = task.emails();
    if let Some(contacts) = state.config().email.as_ref().map(|email| &email.contacts) {
        let addresses = task.answerers(record);
        emails.extend(
            addresses.iter().filter_map(|address| contacts.get(address.as_str())).map(|e| e.to_ascii_lowercase()),
        );
    }
    emails
}

/// The intent of a page, if its task is open and `email` may answer it.
fn open_task_for(state: &AppState, id: Uuid, email: &str) -> Result<(StoredIntent, HumanTask), Refusal> {
    let stored = state.store().intent(id)?.ok_or(Refusal::NotFound)?;
    check_open(state, stored, email)
}

fn check_open(state: &AppState, stored: StoredIntent, email: &str) -> Result<(StoredIntent, HumanTask), Refusal> {
    if stored.is_replica() || stored.is_transferred_away() {
        return Err(Refusal::Moved);
    }
    let Some(task) = stored.record.open_human_task() else {
        return Err(Refusal::Closed { record: Box::new(stored.record) });
    };
    if !email_answerers(state, &stored.record, &task).iter().any(|allowed| allowed == email) {
        return Err(Refusal::NotYours);
    }
    Ok((stored, task))
}

/// How a page was reached: by a magic link (spent by the answer) or in a session.
enum Via {
    Link { nonce: Uuid, email: String, until_ms: u64 },
    Session { claims: Claims },
}

impl Via {
    fn email(&self) -> &str {
        match self {
            Via::Link { email, .. } => email,
            Via::Session { claims } => &claims.email,
        }
    }

    fn channel(&self) -> &'static str {
        match self {
            Via::Link { .. } => "email_link",
            Via::Session { .. } => "web",
        }
    }
}

fn render_task(
    state: &AppState,
    stored: &StoredIntent,
    task: &HumanTask,
    action: &str,
    via: &Via,
    error: Option<&TaskError>,
    values: &[(String, String)],
) -> Markup {
    let csrf = match via {
        Via::Session { claims } => {
            Uuid::parse_str(&stored.record.intent_id).ok().map(|id| state.links().csrf(claims, id))
        }
        Via::Link { .. } => None,
    };
    pages::task(&pages::TaskPage {
        record: &stored.record,
        task,
        inputs: form::inputs(task),
        action,
        csrf: csrf.as_deref(),
        error,
        values,
        email: via.email(),
    })
}

fn verify(state: &AppState, token: &str) -> Result<Claims, Refusal> {
    Ok(state.links().verify(token, now_unix_ms())?)
}

fn task_link(state: &AppState, token: &str) -> Result<(Claims, Uuid), Refusal> {
    let claims = verify(state, token)?;
    match claims.purpose {
        Purpose::Task { intent_id } => {
            if let Some(at) = state.store().link_spent(claims.nonce)? {
                return Err(Refusal::Spent { at });
            }
            Ok((claims.clone(), intent_id))
        }
        _ => Err(Refusal::Link(LinkError::Malformed)),
    }
}

async fn show_by_link(State(state): State<AppState>, Path(token): Path<String>) -> Page {
    let shown = task_link(&state, &token).and_then(|(claims, id)| {
        let (stored, task) = open_task_for(&state, id, &claims.email)?;
        let via = Via::Link { nonce: claims.nonce, email: claims.email.clone(), until_ms: claims.exp };
        Ok(render_task(&state, &stored, &task, &format!("/tasks/link/{token}"), &via, None, &[]))
    });
    match shown {
        Ok(markup) => Page(StatusCode::OK, markup),
        Err(refusal) => refusal.page(),
    }
}

async fn answer_by_link(State(state): State<AppState>, Path(token): Path<String>, request: Request) -> Page {
    let (claims, id) = match task_link(&state, &token) {
        Ok(found) => found,
        Err(refusal) => return refusal.page(),
    };
    let via = Via::Link { nonce: claims.nonce, email: claims.email.clone(), until_ms: claims.exp };
    submit(&state, id, via, &format!("/tasks/link/{token}"), request).await
}

/// Reads a submission, answers the task, and shows the outcome or the form again.
async fn submit(state: &AppState, id: Uuid, via: Via, action: &str, request: Request) -> Page {
    let email = via.email();
    let submission = match read_submission(state, request).await {
        Ok(submission) => submission,
        Err(page) => return page,
    };
    if let Via::Session { claims } = &via
        && !submission.text("csrf").is_some_and(|token| state.links().csrf_matches(claims, id, token))
    {
        return message(StatusCode::FORBIDDEN, "Form expired", "Open the task from your task list again and resend.");
    }
    match answer(state, id, &via, &submission).await {
        Ok(record) => {
            let outcome = record.status().to_string();
            let next = matches!(via, Via::Session { .. }).then_some(("/tasks", "Back to your tasks"));
            Page(
                StatusCode::OK,
                pages::message("Thank you: your answer is recorded", &format!("The intent is {outcome} now."), next),
            )
        }
        Err(Refusal::Invalid(error)) => match open_task_for(state, id, email) {
            Ok((stored, task)) => {
                let values: Vec<(String, String)> =
                    submission.texts.into_iter().filter(|(name, _)| name != "csrf" && name != "outcome").collect();
                Page(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    render_task(state, &stored, &task, action, &via, Some(&error), &values),
                )
            }
            Err(refusal) => refusal.page(),
        },
        Err(refusal) => refusal.page(),
    }
}

/// Answers the task in one write: checks it is open and `email`'s, spends the link, applies
/// the answer and wakes the handler. An invalid answer spends nothing.
async fn answer(state: &AppState, id: Uuid, via: &Via, submission: &Submission) -> Result<IntentRecord, Refusal> {
    let submission = submission.clone();
    let (email, channel) = (via.email().to_owned(), via.channel());
    let spend = match via {
        Via::Link { nonce, until_ms, .. } => Some((*nonce, *until_ms)),
        Via::Session { .. } => None,
    };
    let checker = state.clone();
    let record = state
        .store()
        .write(move |txn| -> Result<IntentRecord, Refusal> {
            let stored = txn.intent(id)?.ok_or(Refusal::NotFound)?;
            let (mut stored, task) = check_open(&checker, stored, &email)?;
            let task_result = form::task_result(&task, &submission).map_err(Refusal::Invalid)?;
            if let Some((nonce, until_ms)) = spend
                && let Some(at) = txn.spend_link(nonce, until_ms)?
            {
                return Err(Refusal::Spent { at });
            }
            let decision = Decision { by: email.clone(), at: now_rfc3339(), via: channel.to_owned() };
            let (_, events) =
                crate::api::record_answer(&mut stored, &task_result, &decision, None).map_err(Refusal::Invalid)?;
            txn.update_intent(&stored, &events)?;
            crate::api::task_answered(txn, &stored)?;
            Ok(stored.record)
        })
        .await?;
    Ok(record)
}

async fn read_submission(state: &AppState, request: Request) -> Result<Submission, Page> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let bad = |text: String| message(StatusCode::BAD_REQUEST, "The form could not be read", &text);
    if !multipart {
        let axum::Form(texts) = axum::Form::<Vec<(String, String)>>::from_request(request, state)
            .await
            .map_err(|error| bad(error.body_text()))?;
        return Ok(Submission { texts, files: Vec::new() });
    }
    let mut parts = Multipart::from_request(request, state).await.map_err(|error| bad(error.body_text()))?;
    let mut submission = Submission::default();
    while let Some(field) = parts.next_field().await.map_err(|error| bad(error.body_text()))? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let bytes = field.bytes().await.map_err(|error| bad(error.body_text()))?;
        match file_name {
            Some(file_name) if name == "evidence_file" => {
                if !file_name.is_empty() || !bytes.is_empty() {
                    submission.files.push(keep_evidence(state, &file_name, bytes).await?);
                }
            }
            _ => submission.texts.push((name, String::from_utf8_lossy(&bytes).into_owned())),
        }
    }
    Ok(submission)
}

/// Keeps an evidence file under the data dir by its SHA-256, before the answer that names it.
async fn keep_evidence(state: &AppState, file_name: &str, bytes: Bytes) -> Result<Attachment, Page> {
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let dir: PathBuf = state.config().node.data_dir.join("evidence");
    let path = dir.join(&sha256);
    let written = async {
        tokio::fs::create_dir_all(&dir).await?;
        if !tokio::fs::try_exists(&path).await? {
            let partial = dir.join(format!("{sha256}.part"));
            let file = tokio::fs::File::create(&partial).await?;
            let mut file = tokio::io::BufWriter::new(file);
            tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await?;
            tokio::io::AsyncWriteExt::flush(&mut file).await?;
            file.into_inner().sync_all().await?;
            tokio::fs::rename(&partial, &path).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    if let Err(error) = written.await {
        tracing::error!(%error, "cannot keep an evidence file");
        return Err(message(StatusCode::SERVICE_UNAVAILABLE, "Try again shortly", "The file could not be stored."));
    }
    let name: String = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name).chars().take(255).collect();
    Ok(Attachment { name: if name.is_empty() { "evidence".into() } else { name }, size: bytes.len() as u64, sha256 })
}

// --- sessions ----------------------------------------------------------------------------------

fn session_of(state: &AppState, headers: &HeaderMap) -> Option<Claims> {
    let token = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())?;
    let claims = state.links().verify(&token, now_unix_ms()).ok()?;
    let open =
        matches!(claims.purpose, Purpose::Session) && state.store().session(claims.nonce).ok().flatten().is_some();
    open.then_some(claims)
}

fn cookie(state: &AppState, value: &str, max_age_seconds: u64) -> HeaderValue {
    let secure = if state.public_url_is_https() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/tasks; HttpOnly; SameSite=Lax; Max-Age={max_age_seconds}{secure}"
    ))
    .expect("a token is a valid header value")
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Page {
    let Some(session) = session_of(&state, &headers) else {
        return Page(StatusCode::OK, pages::sign_in(None, None));
    };
    let ids = match person_task_candidates(&state, &session.email) {
        Ok(ids) => ids,
        Err(error) => return Refusal::Store(error).page(),
    };
    let tasks: Vec<pages::ListedTask> = ids
        .into_iter()
        .filter_map(|id| open_task_for(&state, id, &session.email).ok())
        .map(|(stored, task)| pages::ListedTask {
            due: stored.record.options.get("deadline_at").and_then(|due| due.as_str()).map(str::to_owned),
            intent_id: stored.record.intent_id,
            title: task.title,
            task_type: task.task_type.as_str().to_owned(),
            from: stored.record.from_agent,
        })
        .collect();
    Page(StatusCode::OK, pages::task_list(&session.email, &tasks))
}

/// The intents that may hold a task for `email`: those naming it, and those of the addresses
/// `[email.contacts]` says it stands behind; each once, oldest first.
fn person_task_candidates(state: &AppState, email: &str) -> Result<Vec<Uuid>, StoreError> {
    let mut ids = state.store().person_tasks(email)?;
    let contacts = state.config().email.as_ref().map(|config| &config.contacts);
    for (address, _) in contacts.into_iter().flatten().filter(|(_, contact)| contact.eq_ignore_ascii_case(email)) {
        ids.extend(state.store().task_candidates(address)?);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

async fn request_sign_in(State(state): State<AppState>, axum::Form(form): axum::Form<Vec<(String, String)>>) -> Page {
    let email = form.iter().find(|(name, _)| name == "email").map(|(_, value)| value.trim().to_ascii_lowercase());
    let Some(email) = email.filter(|email| crate::intent::is_email(email)) else {
        return Page(
            StatusCode::UNPROCESSABLE_ENTITY,
            pages::sign_in(None, Some("Enter an email address, such as ann@example.com.")),
        );
    };
    // The same answer whether or not the address has tasks: the page does not tell who does.
    let notice =
        format!("If {email} has tasks on this node, a sign-in link is on its way. It works once, for 15 minutes.");
    let known = state.store().person_tasks(&email).is_ok_and(|ids| !ids.is_empty())
        || state
            .config()
            .email
            .as_ref()
            .is_some_and(|config| config.contacts.values().any(|known| known.eq_ignore_ascii_case(&email)));
    if known && state.sign_in_allowed(&email, SIGN_IN_INTERVAL_MS) {
        let job = MailJob::new(Recipient::Email(email.clone()), MailAbout::SignIn);
        let queued = state
            .store()
            .write(move |txn| -> Result<(), StoreError> {
                txn.queue_mail(&job);
                Ok(())
            })
            .await;
        if let Err(error) = queued {
            return Refusal::Store(error).page();
        }
        tracing::info!(target: "axp::audit", decision = "sign_in_link_sent", email = %email, "sign-in link queued");
    }
    Page(StatusCode::OK, pages::sign_in(Some(&notice), None))
}

fn sign_in_link(state: &AppState, token: &str) -> Result<Claims, Refusal> {
    let claims = verify(state, token)?;
    if claims.purpose != Purpose::SignIn {
        return Err(Refusal::Link(LinkError::Malformed));
    }
    if let Some(at) = state.store().link_spent(claims.nonce)? {
        return Err(Refusal::Spent { at });
    }
    Ok(claims)
}

async fn show_sign_in(State(state): State<AppState>, Path(token): Path<String>) -> Page {
    match sign_in_link(&state, &token) {
        Ok(claims) => Page(StatusCode::OK, pages::confirm_sign_in(&format!("/tasks/sign-in/{token}"), &claims.email)),
        Err(refusal) => refusal.page(),
    }
}

async fn sign_in(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let claims = match sign_in_link(&state, &token) {
        Ok(claims) => claims,
        Err(refusal) => return refusal.page().into_response(),
    };
    let hours = state.config().web.session_hours;
    let expires_ms = now_unix_ms().saturating_add(hours.saturating_mul(3_600_000));
    let session =
        Claims { purpose: Purpose::Session, email: claims.email.clone(), exp: expires_ms, nonce: Uuid::now_v7() };
    let (link_nonce, link_until, session_nonce, email) =
        (claims.nonce, claims.exp, session.nonce, claims.email.clone());
    let opened = state
        .store()
        .write(move |txn| -> Result<(), Refusal> {
            if let Some(at) = txn.spend_link(link_nonce, link_until)? {
                return Err(Refusal::Spent { at });
            }
            txn.open_session(session_nonce, &Session { email, expires_ms });
            Ok(())
        })
        .await;
    if let Err(refusal) = opened {
        return refusal.page().into_response();
    }
    tracing::info!(target: "axp::audit", decision = "signed_in", email = %claims.email, "signed in to the task list");
    let mut response = Redirect::to("/tasks").into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&state, &state.links().sign(&session), hours * 3600));
    response
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = session_of(&state, &headers) {
        let nonce = session.nonce;
        let closed = state
            .store()
            .write(move |txn| -> Result<(), StoreError> {
                txn.close_session(nonce);
                Ok(())
            })
            .await;
        if let Err(error) = closed {
            return Refusal::Store(error).page().into_response();
        }
    }
    let mut response =
        Page(StatusCode::OK, pages::message("Signed out", "You are signed out.", Some(("/tasks", "Sign in again"))))
            .into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie(&state, "", 0));
    response
}

fn session_task(state: &AppState, headers: &HeaderMap, id: &str) -> Result<(Claims, Uuid), Page> {
    let Some(claims) = session_of(state, headers) else {
        return Err(Page(StatusCode::UNAUTHORIZED, pages::sign_in(Some("Sign in to see this task."), None)));
    };
    let id = Uuid::parse_str(id).map_err(|_| Refusal::NotFound.page())?;
    Ok((claims, id))
}

async fn show_in_session(State(state): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Page {
    let (claims, id) = match session_task(&state, &headers, &id) {
        Ok(found) => found,
        Err(page) => return page,
    };
    match open_task_for(&state, id, &claims.email) {
        Ok((stored, task)) => {
            let via = Via::Session { claims };
            Page(StatusCode::OK, render_task(&state, &stored, &task, &format!("/tasks/{id}"), &via, None, &[]))
        }
        Err(refusal) => refusal.page(),
    }
}

async fn answer_in_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    request: Request,
) -> Page {
    let (claims, id) = match session_task(&state, &headers, &id) {
        Ok(found) => found,
        Err(page) => return page,
    };
    submit(&state, id, Via::Session { claims }, &format!("/tasks/{id}"), request).await
}
