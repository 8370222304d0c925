//! Every error the API returns: JSON `{code, message, details}` with the matching status, and the
//! JSON body extractor that turns malformed input into a 400 naming the problem.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use prexor_coord::CoordError;
use prexor_domain::FieldProblem;
pub use prexor_proto::ErrorCode;
use prexor_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error answer (boxed: handlers return it by value through `Result`).
#[derive(Debug)]
pub struct ApiError(Box<ErrorBody>);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error code (`NOT_FOUND`, `CONFLICT`, ...; see docs/api.md).
    #[serde(serialize_with = "code_name")]
    #[schema(value_type = String)]
    code: ErrorCode,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<serde_json::Value>,
    #[serde(skip)]
    retry_after_secs: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `ApiError::<name>(message)`: an error with one fixed code.
macro_rules! with_code {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        impl ApiError {
            $(
                $(#[$doc])*
                pub fn $name(message: impl Into<String>) -> Self {
                    ApiError::new(ErrorCode::$code, message)
                }
            )*
        }
    };
}

with_code! {
    /// A store needed to answer is unreachable: 503, the client may retry (any replica).
    unavailable => Unavailable,
    /// Something behind the api (a node, through a gateway) did not answer in time: 504.
    timeout => Timeout,
    bad_request => BadRequest,
    unauthorized => Unauthorized,
    forbidden => Forbidden,
    not_found => NotFound,
    conflict => Conflict,
    internal => Internal,
}

fn code_name<S: serde::Serializer>(code: &ErrorCode, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(code.as_str())
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorBody {
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }))
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.0.details = Some(details);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.0.retry_after_secs = Some(secs.max(1));
        self
    }

    /// 400 listing every invalid field.
    pub fn invalid(what: &str, problems: &[FieldProblem]) -> Self {
        let listed: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        ApiError::new(
            ErrorCode::ValidationFailed,
            format!("{what} is invalid: {}", listed.join("; ")),
        )
        .with_details(serde_json::json!({ "fields": problems }))
    }

    /// 400 for one invalid field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::new(ErrorCode::ValidationFailed, format!("{field}: {message}"))
            .with_details(serde_json::json!({ "fields": [{ "field": field, "message": message }] }))
    }

    pub fn too_many(code: ErrorCode, message: impl Into<String>, retry_secs: u64) -> Self {
        ApiError::new(code, message).retry_after(retry_secs)
    }

    /// The caller is not (or no longer) signed in.
    pub fn is_unauthorized(&self) -> bool {
        self.0.code == ErrorCode::Unauthorized
    }

    /// What went wrong, as the client reads it (the dashboard shows it on its pages).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The invalid fields it names (`details.fields` of [`ApiError::invalid`] and
    /// [`ApiError::field`]), as (field, message) pairs: a form shows each next to its field.
    pub fn field_problems(&self) -> Vec<(String, String)> {
        let fields = self.0.details.as_ref().and_then(|d| d.get("fields"));
        fields
            .and_then(|f| f.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let field = p.get("field")?.as_str()?;
                let message = p.get("message")?.as_str()?;
                Some((field.to_owned(), message.to_owned()))
            })
            .collect()
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Seconds the client should wait before retrying, when the error says so.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.0.retry_after_secs
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let code = err.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %err, "store error");
        }
        ApiError::new(code, err.to_string())
    }
}

impl From<CoordError> for ApiError {
    fn from(err: CoordError) -> Self {
        // Valkey holds nothing the API could fail on for good: whatever went wrong, retrying
        // (on any replica) is the answer.
        ApiError::unavailable(err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = *self.0;
        let retry = body.retry_after_secs;
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

/// JSON in and out: as a request body, malformed or mistyped input is a 400 that says what is
/// wrong (a body over the size limit is a 413); as an answer, [`axum::Json`]. Named `Json` so
/// that the OpenAPI document takes a handler's request body from its signature.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let text = rejection.body_text();
    match rejection {
        JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is larger than this endpoint accepts",
            )
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON with `Content-Type: application/json`",
        ),
        _ => ApiError::bad_request(format!("the request body is not valid: {text}")),
    }
}

/// `err` as an answer; 409 `taken()` when it is a duplicate key (another writer got there first).
pub fn conflict_if_taken(err: StoreError, taken: impl FnOnce() -> String) -> ApiError {
    if err.is_duplicate_key() {
        ApiError::conflict(taken())
    } else {
        err.into()
    }
}

/// 400 for `field` unless `name` is a valid name ([`prexor_domain::validate_name`]).
pub fn check_name(field: &str, name: &str) -> ApiResult<()> {
    prexor_domain::validate_name(name).map_err(|e| ApiError::field(field, e.to_string()))
}

/// `text` as a duration (`"90s"`, `"12h"`, `"30d"`), or 400 for `field`.
pub fn duration(field: &str, text: &str) -> ApiResult<std::time::Duration> {
    humantime::parse_duration(text)
        .map_err(|e| ApiError::field(field, format!("{text:?} is not a duration: {e}")))
}

/// An optional JSON body: empty means the defaults.
pub fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid: {e}")))
}
