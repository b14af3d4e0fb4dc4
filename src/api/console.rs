//! `/console`: the web console (docs/console.md). Its files are built from `console/`
//! (Preact + Vite) into `console/dist/`, committed, and compiled into the binary here, so
//! it needs no network and no files at run time. It is a static page: everything it
//! shows comes from the API routes it calls with the token the user signs in with.
//! `server.console = false` turns it off (404).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};

use super::{path_param, State};
use crate::error::ApiError;

/// Only the console's own files; no inline scripts or styles, no other origin.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'";

/// (file name under `/console/`, content type, bytes). The first one is the page.
pub const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/dist/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/dist/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/dist/app.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_bytes!("../../console/dist/icon.svg"),
    ),
];

fn serve(state: &State, name: &str) -> Result<HttpResponse, ApiError> {
    if !state.settings.server.console {
        return Err(ApiError::NotFound(
            "the console is disabled (server.console = false)".into(),
        ));
    }
    // `/console/` and unknown paths without a dot (a reload on a page) get the page.
    let name = if name.is_empty() || !name.contains('.') {
        "index.html"
    } else {
        name
    };
    let (_, content_type, bytes) = FILES
        .iter()
        .find(|(file, _, _)| *file == name)
        .ok_or_else(|| ApiError::NotFound(format!("no console file {name}")))?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, *content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "SAMEORIGIN"))
        // Fixed file names: revalidate, so a new binary's files are used at once.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(*bytes))
}

/// `GET /console`: the page.
pub async fn page(state: State) -> Result<HttpResponse, ApiError> {
    serve(&state, "index.html")
}

/// `GET /console/{file}`: one of the console's files.
pub async fn file(state: State, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&state, path_param(&req, "file"))
}

#[cfg(test)]
mod tests {
    use super::FILES;

    #[test]
    fn the_page_loads_only_the_embedded_files() {
        let page = std::str::from_utf8(FILES[0].2).unwrap();
        for (name, _, bytes) in FILES {
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        for reference in ["/console/app.js", "/console/app.css", "/console/icon.svg"] {
            assert!(page.contains(reference), "index.html lacks {reference}");
        }
        // Nothing from another origin, nothing inline that the CSP would refuse.
        assert!(!page.contains("http://") && !page.contains("https://"));
        assert!(!page.contains("<script>") && !page.contains("<style"));
    }
}
