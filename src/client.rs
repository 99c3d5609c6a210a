//! A small client of the node's HTTP API, for the CLI and the benchmark. It speaks the same
//! wire format as the official SDKs: `x-api-key`, JSON bodies, SSE frames.

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {code}: {message}")]
    Api { status: StatusCode, code: String, message: String },
    #[error("cannot reach the node at {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("the node answered something that is not JSON: {0}")]
    Decode(String),
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: String,
    /// Sent as `x-axp-channel`, how the node records where a human decision came from.
    channel: Option<&'static str>,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub event: String,
    pub data: String,
}

impl Client {
    pub fn new(base_url: &str, api_key: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            channel: None,
        }
    }

    /// Names the channel (`cli`, ...) on every request, for the node's audit of decisions.
    pub fn with_channel(mut self, channel: &'static str) -> Client {
        self.channel = Some(channel);
        self
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value, idempotency_key: Option<&str>) -> Result<Value, ClientError> {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let request = match self.channel {
            Some(channel) => request.header("x-axp-channel", channel),
            None => request,
        };
        let response =
            request.header("x-api-key", &self.api_key).send().await.map_err(|source| self.transport(source))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|source| self.transport(source))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::Decode(String::from_utf8_lossy(&bytes).into_owned()))?;
        if status.is_success() {
            return Ok(body);
        }
        let error = &body["error"];
        Err(ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("unknown").to_owned(),
            message: error["message"].as_str().unwrap_or("(no message)").to_owned(),
        })
    }

    fn transport(&self, source: reqwest::Error) -> ClientError {
        ClientError::Transport { url: self.base.clone(), source }
    }

    /// Opens an SSE stream and hands each frame to `on_frame` until the server closes it or
    /// `on_frame` returns false.
    pub async fn stream(&self, path: &str, mut on_frame: impl FnMut(Frame) -> bool) -> Result<(), ClientError> {
        let response = self
            .http
            .get(self.url(path))
            .header("x-api-key", &self.api_key)
            .send()
            .await
            .map_err(|source| self.transport(source))?;
        if !response.status().is_success() {
            return self.send_error(response).await;
        }
        let mut body = response.bytes_stream();
        let mut buffer = String::new();
        let mut frame = Frame { event: String::new(), data: String::new() };
        while let Some(chunk) = body.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.map_err(|source| self.transport(source))?));
            while let Some(end) = buffer.find('\n') {
                let line = buffer[..end].trim_end_matches('\r').to_owned();
                buffer.drain(..=end);
                if line.is_empty() {
                    if !frame.event.is_empty() || !frame.data.is_empty() {
                        let complete =
                            std::mem::replace(&mut frame, Frame { event: String::new(), data: String::new() });
                        if !on_frame(complete) {
                            return Ok(());
                        }
                    }
                } else if let Some(event) = line.strip_prefix("event:") {
                    frame.event = event.trim().to_owned();
                } else if let Some(data) = line.strip_prefix("data:") {
                    if !frame.data.is_empty() {
                        frame.data.push('\n');
                    }
                    frame.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                }
            }
        }
        Ok(())
    }

    async fn send_error(&self, response: reqwest::Response) -> Result<(), ClientError> {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Err(ClientError::Api {
            status,
            code: body["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
            message: body["error"]["message"].as_str().unwrap_or("(no message)").to_owned(),
        })
    }
}
