//! A server that cannot be reached is named in the error.

use std::time::Duration;

use anyhow::Result;

use crate::support::run;

#[tokio::test]
async fn the_address_tried_is_in_the_error() -> Result<()> {
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let output = run(&["list", "--server", &server], Duration::from_secs(30)).await?;
    assert_eq!(output.code, 5, "{output:?}");
    assert!(
        output
            .stderr
            .contains(&format!("cannot reach the jobq server at {server}: ")),
        "{output:?}"
    );
    Ok(())
}
