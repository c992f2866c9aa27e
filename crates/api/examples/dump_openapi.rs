//! Prints the API's OpenAPI 3.1 document (what `GET /v1/openapi.json` serves), without a
//! server: `cargo run -q -p switchyard-api --example dump_openapi > openapi.json`. Handy to
//! diff the document across a change to the route annotations.

fn main() {
    print!(
        "{}",
        switchyard_api::openapi()
            .to_pretty_json()
            .unwrap_or_default()
    );
}
