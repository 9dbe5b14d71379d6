//! The OpenAI-compatible wire format: request and response bodies, the error JSON, and the
//! checks that turn a request into what the worker generates.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::formats::chat_template::ChatMessage;
use crate::runtime::{GenerateParams, SamplingParams, StopReason};

/// An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (503 when the queue is full).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        };
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A 400 about one request field.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    pub fn param(mut self, p: &str) -> ApiError {
        self.param = Some(p.to_string());
        self
    }

    pub fn code(mut self, c: &'static str) -> ApiError {
        self.code = Some(c);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and length fields both endpoints share (unknown fields are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<i64>,
    pub logprobs: Option<Value>,
    /// Extensions llama.cpp's server also takes.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
}

/// Message content: a string, or a list of parts of which only text is supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Value>>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub common: Common,
}

/// What a completion request's prompt is, before tokenisation.
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Parses a JSON body: malformed JSON and wrong field types are both 400s, worded apart.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.classify() == serde_json::error::Category::Data {
            "invalid request body"
        } else {
            "could not parse the JSON body"
        };
        ApiError::new(StatusCode::BAD_REQUEST, format!("{what}: {e}"))
    })
}

impl ChatRequest {
    /// The conversation for the chat template: system (and `developer`, OpenAI's newer name
    /// for it), user and assistant turns with text content.
    pub fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("messages", "messages must not be empty"));
        }
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::invalid("tools", "tool calling is not supported"));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = match m.role.as_str() {
                    "system" | "developer" => "system",
                    "user" => "user",
                    "assistant" => "assistant",
                    r => {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].role"),
                            format!("role {r:?} is not supported (system, user, assistant)"),
                        ))
                    }
                };
                let text = match &m.content {
                    None => String::new(),
                    Some(Content::Text(s)) => s.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut s = String::new();
                        for p in parts {
                            match (p.get("type").and_then(Value::as_str), p.get("text")) {
                                (Some("text"), Some(Value::String(t))) => s.push_str(t),
                                _ => {
                                    return Err(ApiError::invalid(
                                        &format!("messages[{i}].content"),
                                        "only text content parts are supported",
                                    ))
                                }
                            }
                        }
                        s
                    }
                };
                Ok(ChatMessage::new(role, text))
            })
            .collect()
    }
}

impl CompletionRequest {
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        if self.echo == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::invalid(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        let bad = || {
            ApiError::invalid(
                "prompt",
                "prompt must be a string, a list of one string, or a list of token ids",
            )
        };
        match &self.prompt {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                Ok(Prompt::Text(a[0].as_str().unwrap_or_default().to_string()))
            }
            Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => Ok(Prompt::Ids(
                a.iter()
                    .map(|v| {
                        v.as_u64()
                            .and_then(|x| u32::try_from(x).ok())
                            .ok_or_else(bad)
                    })
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(bad()),
        }
    }
}

impl Common {
    /// Whether the request names another model than the loaded one (omitted or empty: ours).
    pub fn check_model(&self, id: &str) -> Result<(), ApiError> {
        match self.model.as_deref() {
            Some(m) if !m.is_empty() && m != id => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("The model `{m}` does not exist (this server has `{id}`)"),
            )
            .param("model")
            .code("model_not_found")),
            _ => Ok(()),
        }
    }

    /// The generation settings, after refusing values wick cannot honour. `room` is how many
    /// tokens the context has left after the prompt (the default length).
    pub fn generate_params(&self, room: usize) -> Result<GenerateParams, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
        if matches!(self.logprobs, Some(Value::Bool(true))) {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
        }
        // OpenAI's penalties subtract from logits by count and presence; wick's repetition
        // penalty divides them, a different curve, so no silent mapping: only 0 is accepted.
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|v| v != 0.0) {
                return Err(ApiError::invalid(
                    name,
                    format!(
                        "{name} is not supported (only 0); use repetition_penalty \
                         (llama.cpp's multiplicative penalty) instead"
                    ),
                ));
            }
        }
        let max = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => Some(("max_completion_tokens", m)),
            (None, Some(m)) => Some(("max_tokens", m)),
            _ => None,
        };
        let max_tokens = match max {
            Some((name, m)) if m < 1 => {
                return Err(ApiError::invalid(
                    name,
                    format!("{name} must be at least 1"),
                ))
            }
            Some((_, m)) => usize::try_from(m).unwrap_or(usize::MAX),
            None => room.max(1),
        };
        // OpenAI's defaults: temperature 1, top_p 1; top-k and min-p keep wick's defaults.
        let defaults = SamplingParams::default();
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
        }
        let min_p = self.min_p.unwrap_or(defaults.min_p);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(ApiError::invalid("min_p", "min_p must be in [0, 1]"));
        }
        let repeat_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repeat_penalty > 0.0 && repeat_penalty.is_finite()) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "repetition_penalty must be positive",
            ));
        }
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
        }
        // Without a seed each request draws differently, as OpenAI's API does.
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        Ok(GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_k: self.top_k.unwrap_or(defaults.top_k),
                top_p,
                min_p,
                repeat_penalty,
                seed,
                ..defaults
            },
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            ignore_eos: self.ignore_eos,
            ..Default::default()
        })
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// OpenAI's finish reason for why generation ended.
pub fn finish_reason(r: Option<StopReason>) -> &'static str {
    match r {
        Some(StopReason::Eos) | Some(StopReason::StopString) => "stop",
        Some(StopReason::MaxTokens) | Some(StopReason::ContextFull) | None => "length",
    }
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's breakdown of the prompt tokens: how many were served from the cache.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, cached: usize, completion: usize) -> Usage {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(v: Value) -> Common {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn unknown_fields_are_ignored_and_defaults_follow_openai() {
        let c = common(json!({"model": "m", "user": "x", "foo": {"bar": 1}}));
        let p = c.generate_params(100).unwrap();
        assert_eq!(p.max_tokens, 100);
        assert_eq!(p.sampling.temperature, 1.0);
        assert_eq!(p.sampling.top_p, 1.0);
    }

    #[test]
    fn max_completion_tokens_wins_and_stop_takes_a_string_or_a_list() {
        let c = common(json!({"max_tokens": 5, "max_completion_tokens": 7, "stop": "x"}));
        let p = c.generate_params(100).unwrap();
        assert_eq!((p.max_tokens, p.stop.clone()), (7, vec!["x".to_string()]));
        let c = common(json!({"stop": ["a", "", "b"]}));
        assert_eq!(c.generate_params(1).unwrap().stop, vec!["a", "b"]);
    }

    #[test]
    fn unsupported_values_name_their_field() {
        for (v, param) in [
            (json!({"n": 2}), "n"),
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"presence_penalty": -1}), "presence_penalty"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        ] {
            let e = common(v.clone()).generate_params(10).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(e.param.as_deref(), Some(param), "{v}");
        }
        assert!(common(json!({"n": 1, "frequency_penalty": 0}))
            .generate_params(10)
            .is_ok());
    }

    #[test]
    fn model_names_other_than_the_loaded_one_are_404() {
        assert!(common(json!({})).check_model("m").is_ok());
        assert!(common(json!({"model": "m"})).check_model("m").is_ok());
        let e = common(json!({"model": "gpt-4"}))
            .check_model("m")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.body()["error"]["code"], "model_not_found");
    }

    #[test]
    fn chat_roles_and_text_parts() {
        let r: ChatRequest = parse(
            br#"{"messages": [{"role": "developer", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}"#,
        )
        .unwrap();
        let m = r.chat_messages().unwrap();
        assert_eq!(
            (m[0].role.as_str(), m[1].content.as_str()),
            ("system", "ab")
        );
        let r: ChatRequest = parse(br#"{"messages": [{"role": "tool", "content": "x"}]}"#).unwrap();
        assert_eq!(
            r.chat_messages().unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            parse::<ChatRequest>(b"{").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
