//! The admin dashboard (`GET /ui`): static files embedded in the binary. The page itself holds
//! no data; every figure it shows comes from the admin API, called from the browser with the
//! token the operator types (docs/api.md, "Dashboard").

use hyper::StatusCode;

use super::{HttpResponse, error, response};

const INDEX: &str = include_str!("ui/index.html");
const APP: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Whether `path` is one of the dashboard's files.
pub(super) fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The file at `path` (`/ui`, `/ui/`, `/ui/app.js`, `/ui/style.css`).
pub(super) fn serve(path: &str) -> HttpResponse {
    match path {
        "/ui" | "/ui/" | "/ui/index.html" => {
            response(StatusCode::OK, "text/html; charset=utf-8", INDEX.to_string())
        }
        "/ui/app.js" => response(StatusCode::OK, "text/javascript; charset=utf-8", APP.to_string()),
        "/ui/style.css" => response(StatusCode::OK, "text/css; charset=utf-8", STYLE.to_string()),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such dashboard file"),
    }
}
