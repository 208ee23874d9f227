//! A whole deployment on one machine: a private Redis, the Daraja simulator, gateways and
//! callback-ingest nodes, all sharing a fresh random key prefix and fresh random secrets.
//!
//! The gateways' CallBackURL base points at ingest node 0; a test that wants a callback
//! to arrive through another node reads the CallBackURL from the simulator's records and
//! POSTs the Daraja body to that node itself.
//!
//! Logs go to `target/e2e-logs/<test name>/`; the directory is printed when a test fails.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use stk_relay_shared::api::{PushRequest, PushResponse};
use stk_relay_shared::daraja::types::CallbackAck;
use stk_relay_shared::payment::PaymentState;

use crate::bins::{self, Binaries};
use crate::process::Node;
use crate::redis_cluster::RedisClusterSet;
use crate::redis_server::{RedisOptions, RedisServer, TlsFiles};
use crate::sentinel::{SentinelSet, MASTER_NAME};
use crate::sim::{self, SimControl};
use crate::sse::SseClient;
use crate::ws::{WsClient, WsConnectError};
use crate::{daraja, random_alnum, wait, STEP};

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub gateways: usize,
    pub ingests: usize,
    /// Redis writes an fsynced AOF, so its data survives SIGKILL.
    pub persistent_redis: bool,
    /// `ws.heartbeat_interval_ms` of the gateways. Tests use the heartbeat as a marker
    /// that "nothing else came", so it is short.
    pub heartbeat_ms: u64,
    /// Log level of the services; `STK_E2E_LOG_LEVEL` overrides it.
    pub log_level: String,
    /// Extra environment for every gateway, after (and so overriding) the defaults.
    pub gateway_env: Vec<(String, String)>,
    /// Extra environment for every ingest node, after the defaults.
    pub ingest_env: Vec<(String, String)>,
    /// Extra environment for ingest node `i` alone (entry `i`), after `ingest_env`; e.g. a
    /// spool directory of its own. Missing entries add nothing.
    pub ingest_env_each: Vec<Vec<(String, String)>>,
    /// Port of gateway `i` (entry `i`) instead of a free one the node picks itself, for a
    /// load balancer configured before the nodes start. Missing entries: port 0.
    pub gateway_ports: Vec<u16>,
    /// Port of ingest node `i`, as `gateway_ports`.
    pub ingest_ports: Vec<u16>,
    /// The gateways' `callbacks.public_base_url` instead of ingest node 0's URL (e.g. a
    /// load balancer in front of the ingest nodes).
    pub callback_base: Option<String>,
    /// Redis also listens for TLS (certificates made by `openssl` into the log dir), and
    /// every node reaches it by `rediss://` with the test CA and a client certificate.
    pub redis_tls: bool,
    /// Two replicas and three sentinels join the Redis; every node runs in
    /// `redis.mode = "sentinel"`. With [`ClusterOptions::redis_tls`] too, everything is
    /// TLS: replication, the addresses the sentinels monitor and name (the data nodes'
    /// TLS ports), the sentinels' own port (`redis.sentinel_tls = true`).
    pub sentinel: bool,
    /// Every node runs in `redis.mode = "cluster"` against a Redis Cluster of three
    /// primaries, each with a replica ([`Cluster::redis_cluster`]), with
    /// `redis.wait_replicas = 1`. (The standalone [`Cluster::redis`] runs too, unused.)
    pub redis_cluster: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            gateways: 2,
            ingests: 2,
            persistent_redis: false,
            heartbeat_ms: 300,
            log_level: "info".to_owned(),
            gateway_env: Vec::new(),
            ingest_env: Vec::new(),
            ingest_env_each: Vec::new(),
            gateway_ports: Vec::new(),
            ingest_ports: Vec::new(),
            callback_base: None,
            redis_tls: false,
            sentinel: false,
            redis_cluster: false,
        }
    }
}

/// How a `GET /v1/payments/{id}` request authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `Authorization: Bearer <token or API key>`
    Bearer(&'a str),
    /// `?token=<token>`
    Query(&'a str),
    None,
}

/// A running deployment. Everything is killed when it is dropped.
pub struct Cluster {
    pub name: String,
    pub log_dir: PathBuf,
    pub opts: ClusterOptions,
    pub redis: RedisServer,
    /// The test certificates, with [`ClusterOptions::redis_tls`].
    pub tls: Option<TlsFiles>,
    /// The replica and sentinels, with [`ClusterOptions::sentinel`].
    pub sentinel: Option<SentinelSet>,
    /// The Redis Cluster, with [`ClusterOptions::redis_cluster`].
    pub redis_cluster: Option<RedisClusterSet>,
    pub sim: Node,
    pub sim_ctl: SimControl,
    pub gateways: Vec<Node>,
    pub ingests: Vec<Node>,
    pub api_key: String,
    pub key_prefix: String,
    pub subscribe_secret: String,
    pub callback_secret: String,
    /// No overall timeout: each request sets its own (streams have none).
    pub http: reqwest::Client,
    /// CheckoutRequestID → phone of every push made through [`Cluster::push`].
    phones: Mutex<HashMap<String, String>>,
    /// The environment each node was started with, for [`Cluster::respawn_ingest`] and
    /// [`Cluster::respawn_gateway`].
    gateway_envs: Vec<Vec<(String, String)>>,
    ingest_envs: Vec<Vec<(String, String)>>,
    respawns: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    /// Two gateways, two ingest nodes, the defaults of [`ClusterOptions`].
    pub async fn start(name: &str) -> Result<Self> {
        Self::start_with(name, ClusterOptions::default()).await
    }

    pub async fn start_with(name: &str, opts: ClusterOptions) -> Result<Self> {
        let bins: &'static Binaries = tokio::task::spawn_blocking(bins::binaries)
            .await
            .map_err(|e| anyhow!("building the service binaries panicked: {e}"))?;
        let log_dir = bins.target_dir.join("e2e-logs").join(name);
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        eprintln!("e2e: {name}: logs in {}", log_dir.display());

        let tls = if opts.redis_tls {
            Some(TlsFiles::generate(&log_dir, "redis").context("making test certificates")?)
        } else {
            None
        };
        let redis = RedisServer::start(
            &log_dir,
            RedisOptions {
                persistent: opts.persistent_redis,
                tls: tls.clone(),
                // Sentinel over TLS: the replicas sync over TLS from this server, and it
                // syncs over TLS from a promoted replica once Sentinel demotes it.
                tls_replication: opts.sentinel && opts.redis_tls,
                ..RedisOptions::default()
            },
        )
        .await
        .context("starting redis-server")?;
        let sentinel = if opts.sentinel {
            Some(SentinelSet::start(&log_dir, &redis, 3, tls.as_ref()).await?)
        } else {
            None
        };
        let redis_cluster = if opts.redis_cluster {
            Some(
                RedisClusterSet::start(&log_dir, 3, tls.as_ref())
                    .await
                    .context("starting the redis cluster")?,
            )
        } else {
            None
        };
        let redis_env = match &redis_cluster {
            Some(set) => cluster_env(set, tls.as_ref()),
            None => redis_env(&redis, tls.as_ref(), sentinel.as_ref()),
        };

        let key_prefix = format!("e2e-{name}-{}", random_alnum(8));
        let api_key = format!("e2e-api-{}", random_alnum(24));
        let subscribe_secret = random_alnum(48);
        let callback_secret = random_alnum(48);
        let level = std::env::var("STK_E2E_LOG_LEVEL").unwrap_or_else(|_| opts.log_level.clone());

        let sim = Node::spawn(
            "sim",
            &bins.sim,
            &["--bind".to_owned(), "127.0.0.1:0".to_owned()],
            &[],
            &log_dir,
        )
        .await
        .context("starting daraja-sim")?;

        let mut ingests = Vec::with_capacity(opts.ingests);
        let mut ingest_envs = Vec::with_capacity(opts.ingests);
        for i in 0..opts.ingests {
            let env = vec![
                kv("INGEST__SERVER__HOST", "127.0.0.1"),
                kv(
                    "INGEST__SERVER__PORT",
                    &opts.ingest_ports.get(i).copied().unwrap_or(0).to_string(),
                ),
                kv("INGEST__REDIS__KEY_PREFIX", &key_prefix),
                kv("INGEST__TOKENS__CALLBACK_SECRET", &callback_secret),
                kv("INGEST__TELEMETRY__LEVEL", &level),
            ];
            let own = opts.ingest_env_each.get(i).cloned().unwrap_or_default();
            let env = [
                env,
                prefixed("INGEST__REDIS__", &redis_env),
                opts.ingest_env.clone(),
                own,
            ]
            .concat();
            let node = Node::spawn(&format!("ingest{i}"), &bins.ingest, &[], &env, &log_dir)
                .await
                .with_context(|| format!("starting ingest{i}"))?;
            ingests.push(node);
            ingest_envs.push(env);
        }
        let callback_base = ingests
            .first()
            .map(|n| n.url().to_owned())
            .ok_or_else(|| anyhow!("a cluster needs at least one ingest node"))?;
        let callback_base = opts.callback_base.clone().unwrap_or(callback_base);

        let mut gateways = Vec::with_capacity(opts.gateways);
        let mut gateway_envs = Vec::with_capacity(opts.gateways);
        for i in 0..opts.gateways {
            let env = vec![
                kv("GATEWAY__SERVER__HOST", "127.0.0.1"),
                kv(
                    "GATEWAY__SERVER__PORT",
                    &opts.gateway_ports.get(i).copied().unwrap_or(0).to_string(),
                ),
                kv("GATEWAY__REDIS__KEY_PREFIX", &key_prefix),
                kv("GATEWAY__API__KEYS", &api_key),
                kv("GATEWAY__TOKENS__SUBSCRIBE_SECRET", &subscribe_secret),
                kv("GATEWAY__TOKENS__CALLBACK_SECRET", &callback_secret),
                kv("GATEWAY__CALLBACKS__PUBLIC_BASE_URL", &callback_base),
                kv("GATEWAY__DARAJA__BASE_URL", sim.url()),
                kv("GATEWAY__DARAJA__CONSUMER_KEY", sim::CONSUMER_KEY),
                kv("GATEWAY__DARAJA__CONSUMER_SECRET", sim::CONSUMER_SECRET),
                kv("GATEWAY__DARAJA__PASSKEY", sim::PASSKEY),
                kv("GATEWAY__DARAJA__SHORTCODE", sim::SHORTCODE),
                kv(
                    "GATEWAY__WS__HEARTBEAT_INTERVAL_MS",
                    &opts.heartbeat_ms.to_string(),
                ),
                kv("GATEWAY__TELEMETRY__LEVEL", &level),
            ];
            let env = [
                env,
                prefixed("GATEWAY__REDIS__", &redis_env),
                opts.gateway_env.clone(),
            ]
            .concat();
            let node = Node::spawn(&format!("gateway{i}"), &bins.gateway, &[], &env, &log_dir)
                .await
                .with_context(|| format!("starting gateway{i}"))?;
            gateways.push(node);
            gateway_envs.push(env);
        }

        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        let sim_ctl = SimControl::new(sim.url(), http.clone());
        let cluster = Self {
            name: name.to_owned(),
            log_dir,
            opts,
            redis,
            tls,
            sentinel,
            redis_cluster,
            sim,
            sim_ctl,
            gateways,
            ingests,
            api_key,
            key_prefix,
            subscribe_secret,
            callback_secret,
            http,
            phones: Mutex::new(HashMap::new()),
            gateway_envs,
            ingest_envs,
            respawns: std::sync::atomic::AtomicUsize::new(0),
        };
        for i in 0..cluster.gateways.len() {
            cluster.wait_ready(cluster.gateway(i).url(), STEP).await?;
        }
        for i in 0..cluster.ingests.len() {
            cluster.wait_ready(cluster.ingest(i).url(), STEP).await?;
        }
        Ok(cluster)
    }

    /// Starts ingest `i` again (after `kill` or `terminate`) with the same environment
    /// and on the same port, so CallBackURLs already handed to Daraja still reach it.
    /// `extra` is added to its environment. Waits until it is live (not ready: a test
    /// may restart it while Redis is down).
    pub async fn respawn_ingest(&mut self, i: usize, extra: &[(String, String)]) -> Result<()> {
        let port = port_of(self.ingests[i].url())?;
        let env = [
            self.ingest_envs[i].clone(),
            vec![kv("INGEST__SERVER__PORT", &port.to_string())],
            extra.to_vec(),
        ]
        .concat();
        let node = self
            .respawn(&format!("ingest{i}"), Role::Ingest, &env)
            .await?;
        self.ingests[i] = node;
        Ok(())
    }

    /// Starts gateway `i` again on the same port, with the same environment plus `extra`.
    pub async fn respawn_gateway(&mut self, i: usize, extra: &[(String, String)]) -> Result<()> {
        let port = port_of(self.gateways[i].url())?;
        let env = [
            self.gateway_envs[i].clone(),
            vec![kv("GATEWAY__SERVER__PORT", &port.to_string())],
            extra.to_vec(),
        ]
        .concat();
        let node = self
            .respawn(&format!("gateway{i}"), Role::Gateway, &env)
            .await?;
        self.gateways[i] = node;
        Ok(())
    }

    async fn respawn(&self, name: &str, role: Role, env: &[(String, String)]) -> Result<Node> {
        let bins: &'static Binaries = tokio::task::spawn_blocking(bins::binaries)
            .await
            .map_err(|e| anyhow!("building the service binaries panicked: {e}"))?;
        let n = self
            .respawns
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let program = match role {
            Role::Ingest => &bins.ingest,
            Role::Gateway => &bins.gateway,
        };
        let node = Node::spawn(&format!("{name}-r{n}"), program, &[], env, &self.log_dir)
            .await
            .with_context(|| format!("restarting {name}"))?;
        let url = node.url().to_owned();
        wait::until(&format!("{name} live after restart"), STEP, || async {
            Ok((self.healthz(&url).await.ok() == Some(200)).then_some(()))
        })
        .await?;
        Ok(node)
    }

    pub fn gateway(&self, i: usize) -> &Node {
        &self.gateways[i]
    }

    pub fn ingest(&self, i: usize) -> &Node {
        &self.ingests[i]
    }

    // ---- merchant side -------------------------------------------------------------

    /// `POST /v1/stk/push` with the API key; returns the raw response.
    pub async fn push_raw(
        &self,
        gw: usize,
        body: &PushRequest,
        idempotency_key: Option<&str>,
    ) -> Result<reqwest::Response> {
        self.push_raw_at(self.gateway(gw).url(), body, idempotency_key)
            .await
    }

    /// [`Cluster::push_raw`] to any base URL (e.g. a load balancer in front of the gateways).
    pub async fn push_raw_at(
        &self,
        base: &str,
        body: &PushRequest,
        idempotency_key: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .post(format!("{base}/v1/stk/push"))
            .timeout(STEP)
            .bearer_auth(&self.api_key)
            .json(body);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req.send().await.context("POST /v1/stk/push")
    }

    /// Pushes a payment through gateway `gw` and expects 200 with a pending response.
    pub async fn push(&self, gw: usize, phone: &str, amount: u32) -> Result<PushResponse> {
        self.push_at(self.gateway(gw).url(), phone, amount)
            .await
            .with_context(|| format!("push via gateway{gw}"))
    }

    /// [`Cluster::push`] to any base URL (e.g. a load balancer in front of the gateways).
    pub async fn push_at(&self, base: &str, phone: &str, amount: u32) -> Result<PushResponse> {
        let body = PushRequest {
            phone: phone.to_owned(),
            amount: amount.into(),
            account_reference: "E2E".to_owned(),
            description: Some("e2e test".to_owned()),
            webhook_url: None,
        };
        let resp = self.push_raw_at(base, &body, None).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::OK {
            bail!("push via {base}: {status}: {text}");
        }
        let pr: PushResponse = serde_json::from_str(&text)
            .with_context(|| format!("push response is not a PushResponse: {text}"))?;
        if pr.status != "PENDING" {
            bail!("push response status is {:?}, expected PENDING", pr.status);
        }
        self.phones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pr.checkout_request_id.clone(), phone.to_owned());
        Ok(pr)
    }

    /// `GET /v1/payments/{id}`; returns the raw response.
    pub async fn get_payment(
        &self,
        gw: usize,
        id: &str,
        auth: Auth<'_>,
    ) -> Result<reqwest::Response> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/payments/{id}", self.gateway(gw).url()))?;
        let mut req;
        match auth {
            Auth::Query(t) => {
                url.query_pairs_mut().append_pair("token", t);
                req = self.http.get(url);
            }
            Auth::Bearer(t) => req = self.http.get(url).bearer_auth(t),
            Auth::None => req = self.http.get(url),
        }
        req = req.timeout(STEP);
        req.send().await.context("GET /v1/payments/{id}")
    }

    /// `GET /v1/payments/{id}/history`; returns the raw response.
    pub async fn get_history(
        &self,
        gw: usize,
        id: &str,
        auth: Auth<'_>,
    ) -> Result<reqwest::Response> {
        let mut url = reqwest::Url::parse(&format!(
            "{}/v1/payments/{id}/history",
            self.gateway(gw).url()
        ))?;
        let req = match auth {
            Auth::Query(t) => {
                url.query_pairs_mut().append_pair("token", t);
                self.http.get(url)
            }
            Auth::Bearer(t) => self.http.get(url).bearer_auth(t),
            Auth::None => self.http.get(url),
        };
        req.timeout(STEP)
            .send()
            .await
            .context("GET /v1/payments/{id}/history")
    }

    /// A payment's history through `GET /v1/payments/{id}/history` with the API key,
    /// and the body as received.
    pub async fn payment_history(
        &self,
        gw: usize,
        id: &str,
    ) -> Result<(stk_relay_shared::history::PaymentHistory, String)> {
        let resp = self
            .get_history(gw, id, Auth::Bearer(&self.api_key))
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::OK {
            bail!("GET history {id} via gateway{gw}: {status}: {text}");
        }
        let h = serde_json::from_str(&text).with_context(|| format!("not a history: {text}"))?;
        Ok((h, text))
    }

    /// The current state through `GET /v1/payments/{id}?token=`.
    pub async fn payment_state(&self, gw: usize, id: &str, token: &str) -> Result<PaymentState> {
        let resp = self.get_payment(gw, id, Auth::Query(token)).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::OK {
            bail!("GET payment {id} via gateway{gw}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("not a STATE: {text}"))
    }

    // ---- browser side --------------------------------------------------------------

    /// `ws://…/v1/payments/{id}/ws?token=…`
    pub fn ws_url(&self, gw: usize, id: &str, token: &str) -> String {
        let mut url = reqwest::Url::parse(&format!(
            "{}/v1/payments/{id}/ws",
            self.gateway(gw).ws_url()
        ))
        .unwrap_or_else(|e| panic!("bad gateway url: {e}"));
        url.query_pairs_mut().append_pair("token", token);
        url.to_string()
    }

    pub async fn ws_connect(
        &self,
        gw: usize,
        id: &str,
        token: &str,
    ) -> Result<WsClient, WsConnectError> {
        WsClient::connect(&self.ws_url(gw, id, token)).await
    }

    /// `GET /v1/payments/{id}/events?token=`; returns the raw response.
    pub async fn sse_request(&self, gw: usize, id: &str, token: &str) -> Result<reqwest::Response> {
        let mut url = reqwest::Url::parse(&format!(
            "{}/v1/payments/{id}/events",
            self.gateway(gw).url()
        ))?;
        url.query_pairs_mut().append_pair("token", token);
        let fut = self
            .http
            .get(url)
            .header("Accept", "text/event-stream")
            .send();
        tokio::time::timeout(STEP, fut)
            .await
            .context("SSE request timed out")?
            .context("SSE request")
    }

    /// Opens an event stream and checks that it is one.
    pub async fn sse_connect(&self, gw: usize, id: &str, token: &str) -> Result<SseClient> {
        let resp = self.sse_request(gw, id, token).await?;
        let status = resp.status();
        if status != reqwest::StatusCode::OK {
            let body = resp.text().await.unwrap_or_default();
            bail!("SSE via gateway{gw}: {status}: {body}");
        }
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if !ct.starts_with("text/event-stream") {
            bail!("SSE content-type is {ct:?}");
        }
        Ok(SseClient::new(resp))
    }

    // ---- Daraja side ---------------------------------------------------------------

    /// The CallBackURL the gateway gave the simulator for a push made with
    /// [`Cluster::push`] (correlated through the push's phone number, which must be
    /// unique within the cluster).
    pub async fn callback_url_for(&self, checkout_request_id: &str) -> Result<String> {
        let phone = self.phone_of(checkout_request_id)?;
        self.sim_ctl.callback_url_for_phone(&phone).await
    }

    /// The CallBackURL paths of many pushes, from one read of the simulator's records.
    pub async fn callback_paths_for(&self, ids: &[&str]) -> Result<HashMap<String, String>> {
        let by_phone = self.sim_ctl.callback_urls_by_phone().await?;
        let phones = self
            .phones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            let phone = phones
                .get(*id)
                .ok_or_else(|| anyhow!("{id} was not pushed through Cluster::push"))?;
            match by_phone.get(phone).map(Vec::as_slice) {
                Some([url]) => {
                    out.insert((*id).to_owned(), sim::path_of(url)?);
                }
                Some(many) => bail!("{} pushes to {phone}; cannot tell them apart", many.len()),
                None => bail!("the simulator has no accepted push to {phone}"),
            }
        }
        Ok(out)
    }

    /// The path of that CallBackURL, to POST to any ingest node.
    pub async fn callback_path_for(&self, checkout_request_id: &str) -> Result<String> {
        sim::path_of(&self.callback_url_for(checkout_request_id).await?)
    }

    /// POSTs raw bytes to an ingest node.
    pub async fn post_callback_bytes(
        &self,
        ingest: usize,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.ingest(ingest).url()))
            .timeout(STEP)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST ingest{ingest} {path}"))
    }

    /// POSTs a Daraja callback body to an ingest node.
    pub async fn post_callback(
        &self,
        ingest: usize,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response> {
        self.post_callback_bytes(ingest, path, serde_json::to_vec(body)?)
            .await
    }

    /// POSTs a callback and expects Daraja's conventional 200 acknowledgement.
    pub async fn deliver_callback(&self, ingest: usize, path: &str, body: &Value) -> Result<()> {
        let resp = self.post_callback(ingest, path, body).await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status != reqwest::StatusCode::OK {
            bail!("callback via ingest{ingest}: {status}: {text}");
        }
        let ack: CallbackAck = serde_json::from_str(&text)
            .with_context(|| format!("callback answer is not an ack: {text}"))?;
        if ack != CallbackAck::accepted() {
            bail!(
                "callback answer {ack:?}, expected {:?}",
                CallbackAck::accepted()
            );
        }
        Ok(())
    }

    /// Delivers a Daraja success callback for `p` through ingest node `ingest`.
    pub async fn deliver_success(
        &self,
        ingest: usize,
        p: &PushResponse,
        amount: u32,
        receipt: &str,
    ) -> Result<()> {
        let path = self.callback_path_for(&p.checkout_request_id).await?;
        let phone = self.phone_of(&p.checkout_request_id)?;
        let body = daraja::success(
            &p.merchant_request_id,
            &p.checkout_request_id,
            amount,
            receipt,
            &phone,
        );
        self.deliver_callback(ingest, &path, &body).await
    }

    /// Delivers a Daraja failure callback for `p` through ingest node `ingest`.
    pub async fn deliver_failure(
        &self,
        ingest: usize,
        p: &PushResponse,
        code: i64,
        desc: &str,
    ) -> Result<()> {
        let path = self.callback_path_for(&p.checkout_request_id).await?;
        let body = daraja::failure(&p.merchant_request_id, &p.checkout_request_id, code, desc);
        self.deliver_callback(ingest, &path, &body).await
    }

    /// Records the phone a payment pushed some other way (e.g. [`Cluster::push_raw`]) was
    /// pushed to, for [`Cluster::deliver_success`].
    pub fn record_phone(&self, checkout_request_id: &str, phone: &str) {
        self.phones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(checkout_request_id.to_owned(), phone.to_owned());
    }

    /// The phone a payment was pushed to through [`Cluster::push`].
    pub fn phone_of(&self, checkout_request_id: &str) -> Result<String> {
        self.phones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(checkout_request_id)
            .cloned()
            .ok_or_else(|| anyhow!("{checkout_request_id} was not pushed through Cluster::push"))
    }

    // ---- health --------------------------------------------------------------------

    /// The status of `GET <base>/readyz`.
    pub async fn readyz(&self, base: &str) -> Result<u16> {
        let resp = self
            .http
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// The status and JSON body of `GET <base>/readyz`.
    pub async fn readyz_json(&self, base: &str) -> Result<(u16, Value)> {
        let resp = self
            .http
            .get(format!("{base}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).with_context(|| format!("readyz body: {text}"))?;
        Ok((status, body))
    }

    /// The status of `GET <base>/healthz`.
    pub async fn healthz(&self, base: &str) -> Result<u16> {
        let resp = self
            .http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }

    /// Waits until `GET <base>/readyz` answers 200.
    pub async fn wait_ready(&self, base: &str, within: Duration) -> Result<()> {
        wait::until(&format!("{base}/readyz == 200"), within, || async {
            Ok((self.readyz(base).await? == 200).then_some(()))
        })
        .await
    }

    /// Waits until `GET <base>/readyz` answers 503.
    pub async fn wait_unready(&self, base: &str, within: Duration) -> Result<()> {
        wait::until(&format!("{base}/readyz == 503"), within, || async {
            Ok((self.readyz(base).await? == 503).then_some(()))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: {} failed; logs of every process are in {}",
                self.name,
                self.log_dir.display()
            );
        }
    }
}

enum Role {
    Ingest,
    Gateway,
}

/// The port of a `http://host:port` URL.
fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| anyhow!("no port in {url}"))
}

/// An environment entry, for [`ClusterOptions::gateway_env`] and the like.
/// The `[redis]` keys (without the service prefix) that point a node at this Redis.
fn redis_env(
    redis: &RedisServer,
    tls: Option<&TlsFiles>,
    sentinel: Option<&SentinelSet>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    let url = match tls {
        Some(files) => {
            env.push(kv("TLS_CA_FILE", &files.ca_cert.display().to_string()));
            env.push(kv(
                "TLS_CERT_FILE",
                &files.client_cert.display().to_string(),
            ));
            env.push(kv("TLS_KEY_FILE", &files.client_key.display().to_string()));
            redis.tls_url().unwrap_or_else(|| redis.url())
        }
        None => redis.url(),
    };
    match sentinel {
        Some(set) => {
            // Only the scheme counts in sentinel mode: the sentinels name the host (with
            // TLS, the data nodes' TLS ports), and the sentinels speak TLS too.
            match (tls, set.is_tls()) {
                (Some(_), true) => {
                    env.push(kv("URL", "rediss://primary.invalid:6379"));
                    env.push(kv("SENTINEL_TLS", "true"));
                }
                _ => env.push(kv("URL", "redis://primary.invalid:6379")),
            }
            env.push(kv("MODE", "sentinel"));
            env.push(kv("SENTINELS", &set.addrs()));
            env.push(kv("MASTER_NAME", MASTER_NAME));
            // Payment writes count only once the replica has them (docs/reliability.md).
            env.push(kv("WAIT_REPLICAS", "1"));
        }
        None => env.push(kv("URL", &url)),
    }
    env
}

/// The `[redis]` keys that point a node at a Redis Cluster.
fn cluster_env(set: &RedisClusterSet, tls: Option<&TlsFiles>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    match (tls, set.tls_seeds()) {
        (Some(files), Some(seeds)) => {
            env.push(kv("TLS_CA_FILE", &files.ca_cert.display().to_string()));
            env.push(kv(
                "TLS_CERT_FILE",
                &files.client_cert.display().to_string(),
            ));
            env.push(kv("TLS_KEY_FILE", &files.client_key.display().to_string()));
            // Only the scheme counts in cluster mode: the seeds name the hosts.
            env.push(kv("URL", "rediss://cluster.invalid:6379"));
            env.push(kv("CLUSTER_NODES", &seeds));
        }
        _ => {
            env.push(kv("URL", "redis://cluster.invalid:6379"));
            env.push(kv("CLUSTER_NODES", &set.seeds()));
        }
    }
    env.push(kv("MODE", "cluster"));
    // Payment writes count only once a replica has them (docs/reliability.md).
    env.push(kv("WAIT_REPLICAS", "1"));
    env
}

fn prefixed(prefix: &str, env: &[(String, String)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

pub fn kv(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}
