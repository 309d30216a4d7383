//! The one script and the one stylesheet, compiled into the binary so the
//! gateway reads no file at run time. Served with their exact content type
//! (the `nosniff` header makes browsers hold us to it).

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;

/// The dashboard script (see `static/app.js`).
pub const APP_JS: &str = include_str!("../../static/app.js");
/// The stylesheet.
pub const STYLE_CSS: &str = include_str!("../../static/style.css");

/// Assets change only with the binary; `no-cache` makes the browser
/// revalidate, so a new gateway's script is used at once.
const ASSET_CACHE: &str = "no-cache";

/// `GET /static/app.js`.
pub async fn app_js() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, ASSET_CACHE),
        ],
        APP_JS,
    )
}

/// `GET /static/style.css`.
pub async fn style_css() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, ASSET_CACHE),
        ],
        STYLE_CSS,
    )
}
