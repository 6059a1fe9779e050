//! The benchmark's writes: the nodes it talks to, one PUT per write, and which writes were
//! acknowledged as changes.

use anyhow::Context;

/// The node behind a URL, from its /v1/nodes.
#[derive(Debug)]
pub(super) struct NodeInfo {
    pub(super) id: String,
    pub(super) region: String,
}

pub(super) async fn node_info(client: &reqwest::Client, base: &str) -> anyhow::Result<NodeInfo> {
    let nodes: serde_json::Value = client
        .get(format!("{base}/v1/nodes"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?
        .json()
        .await
        .with_context(|| format!("{base}/v1/nodes did not answer JSON"))?;
    Ok(NodeInfo {
        id: nodes["node"].as_str().unwrap_or("?").to_owned(),
        region: nodes["region"]
            .as_str()
            .with_context(|| format!("{base}/v1/nodes names no region"))?
            .to_owned(),
    })
}

/// PUTs one status write; Ok(changed) on success.
pub(super) async fn put(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<bool, String> {
    let response = client
        .put(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("HTTP {status}: {text}"));
    }
    let reply: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    Ok(reply["changed"].as_bool().unwrap_or(false))
}

/// Which writes were acknowledged as changes.
#[derive(Debug)]
pub(super) struct WriteOutcomes {
    pub(super) acknowledged: Vec<u64>,
    pub(super) changed: u64,
    pub(super) unchanged: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

impl WriteOutcomes {
    pub(super) fn new(writes: u64) -> Self {
        Self {
            acknowledged: vec![0; writes.div_ceil(64) as usize],
            changed: 0,
            unchanged: 0,
            errors: 0,
            first_error: None,
        }
    }

    pub(super) fn record(&mut self, (seq, outcome): (u64, Result<bool, String>)) {
        match outcome {
            Ok(true) => {
                self.changed += 1;
                self.acknowledged[(seq / 64) as usize] |= 1 << (seq % 64);
            }
            Ok(false) => self.unchanged += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}
