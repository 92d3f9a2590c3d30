//! A read-only JSON-RPC 2.0 face of the ledger, for browsers that check an anchor themselves
//! (`POST /ledger/rpc`): `eth_chainId`, `eth_blockNumber`, and `eth_call` to the contracts the
//! server runs (the ConsentRegistry and the AuditAnchor) only, through the `Ledger` seam, so it
//! answers the same on the embedded ledger and on a node.
//!
//! Nothing here sends a transaction, reads an account's state or calls an arbitrary contract:
//! the proxy gives a page exactly what it needs to check `AuditAnchor.anchoredAt(root)` and no
//! more of the server's node. Errors are JSON-RPC error objects, as nodes answer them.

use alloy::primitives::{Address, Bytes};
use serde_json::{Value, json};

use super::{Ledger, LedgerError};

/// Most requests in one batch.
pub const MAX_BATCH: usize = 16;

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
/// A call the contract reverted, as nodes number it (with the revert data).
const EXECUTION_REVERTED: i64 = 3;
/// The ledger could not answer (a server error of JSON-RPC's reserved range).
const UNAVAILABLE: i64 = -32000;

/// What the proxy may call.
pub struct Callable<'a> {
    pub ledger: &'a dyn Ledger,
    /// The contracts `eth_call` may reach.
    pub contracts: &'a [Address],
}

fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

/// The answer to a request body: one response, an array of them for a batch, or `None` when
/// there is nothing to answer (only notifications).
pub async fn answer(callable: &Callable<'_>, body: &[u8]) -> Option<Value> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Some(error(Value::Null, PARSE_ERROR, "Parse error"));
    };
    match request {
        Value::Array(batch) => {
            if batch.is_empty() {
                return Some(error(Value::Null, INVALID_REQUEST, "empty batch"));
            }
            if batch.len() > MAX_BATCH {
                return Some(error(
                    Value::Null,
                    INVALID_REQUEST,
                    format!("a batch holds at most {MAX_BATCH} requests"),
                ));
            }
            let mut answers = Vec::with_capacity(batch.len());
            for one in &batch {
                if let Some(answer) = single(callable, one).await {
                    answers.push(answer);
                }
            }
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        one => single(callable, &one).await,
    }
}

/// One request's response (`None` for a notification: a request without an id).
async fn single(callable: &Callable<'_>, request: &Value) -> Option<Value> {
    let Some(fields) = request.as_object() else {
        return Some(error(Value::Null, INVALID_REQUEST, "Invalid Request"));
    };
    let id = fields.get("id").cloned();
    let valid_id = id
        .as_ref()
        .is_none_or(|i| i.is_string() || i.is_number() || i.is_null());
    let (Some("2.0"), Some(method), true) = (
        fields.get("jsonrpc").and_then(Value::as_str),
        fields.get("method").and_then(Value::as_str),
        valid_id,
    ) else {
        return Some(error(
            id.unwrap_or(Value::Null),
            INVALID_REQUEST,
            "Invalid Request",
        ));
    };
    let result = call(callable, method, fields.get("params")).await;
    let id = id?;
    Some(match result {
        Ok(value) => json!({"jsonrpc": "2.0", "id": id, "result": value}),
        Err((code, message, data)) => {
            let mut answer = error(id, code, message);
            if let Some(data) = data {
                answer["error"]["data"] = data;
            }
            answer
        }
    })
}

type Failure = (i64, String, Option<Value>);

fn quantity(n: u64) -> Value {
    Value::String(format!("{n:#x}"))
}

async fn call(
    callable: &Callable<'_>,
    method: &str,
    params: Option<&Value>,
) -> Result<Value, Failure> {
    let unavailable = |e: LedgerError| (UNAVAILABLE, e.to_string(), None);
    match method {
        "eth_chainId" => Ok(quantity(callable.ledger.chain_id())),
        "eth_blockNumber" => Ok(quantity(
            callable.ledger.head().await.map_err(unavailable)?.number,
        )),
        "eth_call" => {
            let (to, input) = call_params(params, callable.contracts)?;
            match callable.ledger.call(to, input).await {
                Ok(output) => Ok(Value::String(output.to_string())),
                Err(LedgerError::Reverted { reason, data }) => Err((
                    EXECUTION_REVERTED,
                    format!("execution reverted: {reason}"),
                    Some(Value::String(data.to_string())),
                )),
                Err(e) => Err(unavailable(e)),
            }
        }
        other => Err((
            METHOD_NOT_FOUND,
            format!(
                "the method {} is not served here: only eth_chainId, eth_blockNumber and \
                 eth_call to this server's contracts",
                other.chars().take(64).collect::<String>()
            ),
            None,
        )),
    }
}

/// `[{to, data | input}, block?]` of an `eth_call`, checked against the contracts allowed.
fn call_params(params: Option<&Value>, contracts: &[Address]) -> Result<(Address, Bytes), Failure> {
    let invalid = |why: &str| (INVALID_PARAMS, why.to_owned(), None);
    let params = params
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("eth_call takes [{to, data}, block]"))?;
    let call = params
        .first()
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("eth_call takes [{to, data}, block]"))?;
    // The proxy calls against the newest state only: what `Ledger::call` runs.
    match params.get(1) {
        None | Some(Value::Null) => {}
        Some(Value::String(tag)) if matches!(tag.as_str(), "latest" | "pending") => {}
        Some(_) => return Err(invalid("only the latest block can be called here")),
    }
    let to: Address = call
        .get("to")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| invalid("eth_call needs to: a contract address"))?;
    if !contracts.contains(&to) {
        let allowed: Vec<String> = contracts.iter().map(|a| a.to_checksum(None)).collect();
        return Err(invalid(&format!(
            "eth_call is served only to this server's contracts ({})",
            allowed.join(", ")
        )));
    }
    let input = match call.get("input").or_else(|| call.get("data")) {
        None | Some(Value::Null) => Bytes::new(),
        Some(value) => value
            .as_str()
            .and_then(|d| d.parse::<Bytes>().ok())
            .ok_or_else(|| invalid("data must be 0x-hex"))?,
    };
    Ok((to, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_reach_only_the_allowed_contracts() {
        let registry = Address::repeat_byte(1);
        let allowed = [registry];
        let params = json!([{"to": registry.to_string(), "data": "0x1234"}, "latest"]);
        let (to, input) = call_params(Some(&params), &allowed).unwrap();
        assert_eq!((to, input.to_vec()), (registry, vec![0x12, 0x34]));
        let elsewhere = json!([{"to": Address::repeat_byte(2).to_string(), "data": "0x"}]);
        assert_eq!(
            call_params(Some(&elsewhere), &allowed).unwrap_err().0,
            INVALID_PARAMS
        );
        let old_block = json!([{"to": registry.to_string()}, "0x1"]);
        assert!(call_params(Some(&old_block), &allowed).is_err());
        assert_eq!(quantity(0), "0x0");
        assert_eq!(quantity(255), "0xff");
    }
}
