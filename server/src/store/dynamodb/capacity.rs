//! DynamoDB's published sizing and capacity rules, applied to the JSON of a
//! request and its answer ([`super::wire`] calls them), and the limits real
//! DynamoDB enforces.
//!
//! - An item's size is the sum of its attribute names' UTF-8 lengths and
//!   its values' sizes: a string its UTF-8 length, a binary its length, a
//!   number about one byte per two significant digits plus one, a boolean
//!   or null one byte, a list or map three bytes plus one per element plus
//!   its elements (and, in a map, their names).
//! - A standard write costs one write unit per KB of the item (rounded up,
//!   at least one); a transactional write two. Deleting or updating an item
//!   costs by the larger of its sizes before and after: the layer keeps the
//!   size of each item it saw written (bounded), and charges the smallest
//!   possible when it has not. A condition check in a transaction is
//!   charged as a transactional write of the item checked.
//! - A strongly consistent read costs one read unit per 4 KB (rounded up,
//!   at least one: a missing item too), an eventually consistent read half
//!   as much, a transactional read twice. A query is sized by all the items
//!   it returns together; a count-only query returns no items, so each
//!   counted item is taken as [`COUNTED_ITEM_BYTES`] (an estimate: the due
//!   entries it counts are about that size).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::wire::Usage;

/// Largest item DynamoDB stores.
pub const MAX_ITEM_BYTES: u64 = 400 * 1024;
/// Most items in one transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// Largest transaction.
pub const MAX_TRANSACTION_BYTES: u64 = 4 * 1024 * 1024;
/// Most requests in one `BatchWriteItem`.
pub const MAX_BATCH_WRITES: usize = 25;
/// Most keys in one `BatchGetItem`.
pub const MAX_BATCH_GETS: usize = 100;
/// The size taken for an item a count-only query counted.
pub const COUNTED_ITEM_BYTES: u64 = 128;

/// Items whose size the layer remembers, at most.
const REMEMBERED_SIZES: usize = 1 << 20;

/// The sizes of items seen written, by (table, partition key, sort key).
#[derive(Debug, Default)]
pub(crate) struct Sizes {
    by_key: HashMap<(String, String, String), u64>,
}

impl Sizes {
    fn get(&self, table: &str, key: &Value) -> Option<u64> {
        self.by_key.get(&key_of(table, key)).copied()
    }

    fn set(&mut self, table: &str, item: &Value, size: u64) {
        if self.by_key.len() >= REMEMBERED_SIZES {
            self.by_key.clear();
        }
        self.by_key.insert(key_of(table, item), size);
    }

    fn remove(&mut self, table: &str, key: &Value) -> Option<u64> {
        self.by_key.remove(&key_of(table, key))
    }
}

fn key_of(table: &str, item: &Value) -> (String, String, String) {
    let part = |name: &str| match &item[name] {
        Value::Object(typed) => typed
            .values()
            .next()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    (table.to_string(), part("pk"), part("sk"))
}

/// The size of a typed attribute value.
fn value_size(value: &Value) -> u64 {
    let Value::Object(typed) = value else {
        return 0;
    };
    let Some((kind, inner)) = typed.iter().next() else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S", Value::String(s)) => s.len() as u64,
        ("N", Value::String(n)) => number_size(n),
        ("B", Value::String(b)) => base64_len(b),
        ("BOOL", _) | ("NULL", _) => 1,
        ("SS", Value::Array(items)) => items
            .iter()
            .map(|s| s.as_str().map_or(0, str::len) as u64)
            .sum(),
        ("NS", Value::Array(items)) => items
            .iter()
            .map(|n| n.as_str().map_or(0, number_size))
            .sum(),
        ("BS", Value::Array(items)) => items.iter().map(|b| b.as_str().map_or(0, base64_len)).sum(),
        ("L", Value::Array(items)) => 3 + items.iter().map(|v| 1 + value_size(v)).sum::<u64>(),
        ("M", Value::Object(fields)) => {
            3 + fields
                .iter()
                .map(|(name, v)| 1 + name.len() as u64 + value_size(v))
                .sum::<u64>()
        }
        _ => 0,
    }
}

/// A number's size: one byte per two significant digits, plus one.
fn number_size(number: &str) -> u64 {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let significant = digits
        .trim_start_matches('0')
        .trim_end_matches('0')
        .len()
        .max(1) as u64;
    significant.div_ceil(2) + 1 + u64::from(number.starts_with('-'))
}

/// The length of base64 text, decoded.
fn base64_len(text: &str) -> u64 {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count() as u64;
    (text.len() as u64 / 4 * 3).saturating_sub(padding)
}

/// An item's size: its attributes' names and values.
pub fn item_size(item: &Value) -> u64 {
    item.as_object().map_or(0, |fields| {
        fields
            .iter()
            .map(|(name, value)| name.len() as u64 + value_size(value))
            .sum()
    })
}

fn write_units(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

fn read_units(bytes: u64) -> u64 {
    bytes.div_ceil(4096).max(1)
}

/// Why real DynamoDB would refuse the request, if it would.
pub fn refusal(operation: &str, body: &Value) -> Result<(), String> {
    let too_big = |item: &Value| {
        let size = item_size(item);
        if size > MAX_ITEM_BYTES {
            Err(format!(
                "Item size has exceeded the maximum allowed size ({size} bytes)"
            ))
        } else {
            Ok(size)
        }
    };
    match operation {
        "PutItem" => {
            too_big(&body["Item"])?;
        }
        "TransactWriteItems" => {
            let items = body["TransactItems"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if items.len() > MAX_TRANSACTION_ITEMS {
                return Err(format!(
                    "Member must have length less than or equal to {MAX_TRANSACTION_ITEMS} ({} items)",
                    items.len()
                ));
            }
            let mut total = 0;
            for item in &items {
                total += match &item["Put"]["Item"] {
                    Value::Object(_) => too_big(&item["Put"]["Item"])?,
                    _ => item_size(&item["Update"]["Key"]) + 64,
                };
            }
            if total > MAX_TRANSACTION_BYTES {
                return Err(format!(
                    "Transaction request cannot be larger than 4 MB ({total} bytes)"
                ));
            }
        }
        "BatchWriteItem" => {
            let requests: Vec<&Value> = body["RequestItems"]
                .as_object()
                .map(|t| t.values().filter_map(Value::as_array).flatten().collect())
                .unwrap_or_default();
            if requests.len() > MAX_BATCH_WRITES {
                return Err(format!(
                    "Too many items requested for the BatchWriteItem call ({})",
                    requests.len()
                ));
            }
            for request in requests {
                if request["PutRequest"]["Item"].is_object() {
                    too_big(&request["PutRequest"]["Item"])?;
                }
            }
        }
        "BatchGetItem" => {
            let keys: usize = body["RequestItems"]
                .as_object()
                .map(|t| {
                    t.values()
                        .map(|k| k["Keys"].as_array().map_or(0, Vec::len))
                        .sum()
                })
                .unwrap_or_default();
            if keys > MAX_BATCH_GETS {
                return Err(format!(
                    "Too many items requested for the BatchGetItem call ({keys})"
                ));
            }
        }
        "Query" => between_in_order(body)?,
        _ => {}
    }
    Ok(())
}

/// A key condition `… BETWEEN :lo AND :hi` needs `lo <= hi`.
fn between_in_order(body: &Value) -> Result<(), String> {
    let Some(condition) = body["KeyConditionExpression"].as_str() else {
        return Ok(());
    };
    let words: Vec<&str> = condition.split_whitespace().collect();
    for (i, word) in words.iter().enumerate() {
        if !word.eq_ignore_ascii_case("BETWEEN") {
            continue;
        }
        let (Some(lo), Some(hi)) = (words.get(i + 1), words.get(i + 3)) else {
            continue;
        };
        let value =
            |name: &str| body["ExpressionAttributeValues"][name.trim_end_matches(')')].clone();
        let (lo, hi) = (value(lo), value(hi));
        let out_of_order = match (lo["S"].as_str(), hi["S"].as_str()) {
            (Some(lo), Some(hi)) => lo > hi,
            _ => match (lo["N"].as_str(), hi["N"].as_str()) {
                (Some(lo), Some(hi)) => lo.parse::<f64>().ok() > hi.parse::<f64>().ok(),
                _ => false,
            },
        };
        if out_of_order {
            return Err("Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal to lower bound".into());
        }
    }
    Ok(())
}

/// Adds what a request that reached the table cost to `usage`.
pub(crate) fn count(
    operation: &str,
    request: &Value,
    answer: &Value,
    sizes: &mut Sizes,
    usage: &Usage,
) {
    let table = request["TableName"].as_str().unwrap_or_default();
    let consistent = request["ConsistentRead"].as_bool().unwrap_or(false);
    let written = |bytes: u64, half_units: u64| {
        usage.items_written.fetch_add(1, Ordering::Relaxed);
        usage.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        usage
            .write_half_units
            .fetch_add(half_units, Ordering::Relaxed);
    };
    let items_read = |n: u64| {
        usage.items_read.fetch_add(n, Ordering::Relaxed);
    };
    let read = |half_units: u64| {
        usage
            .read_half_units
            .fetch_add(half_units, Ordering::Relaxed);
    };
    // Half units of a read of `bytes`: 2 per 4 KB strongly, 1 eventually.
    let read_cost =
        |bytes: u64, consistent: bool| read_units(bytes) * if consistent { 2 } else { 1 };
    match operation {
        "PutItem" => {
            let size = item_size(&request["Item"]);
            let before = sizes.get(table, &request["Item"]).unwrap_or(0);
            sizes.set(table, &request["Item"], size);
            written(size, 2 * write_units(size.max(before)));
        }
        "UpdateItem" => {
            let size = sizes
                .get(table, &request["Key"])
                .unwrap_or_else(|| item_size(&request["Key"]));
            written(size, 2 * write_units(size));
        }
        "DeleteItem" => {
            let size = sizes.remove(table, &request["Key"]).unwrap_or(0);
            written(size, 2 * write_units(size));
        }
        "BatchWriteItem" => {
            for (table, requests) in request["RequestItems"].as_object().into_iter().flatten() {
                for r in requests.as_array().into_iter().flatten() {
                    if r["PutRequest"]["Item"].is_object() {
                        let item = &r["PutRequest"]["Item"];
                        let size = item_size(item);
                        sizes.set(table, item, size);
                        written(size, 2 * write_units(size));
                    } else {
                        let size = sizes.remove(table, &r["DeleteRequest"]["Key"]).unwrap_or(0);
                        written(size, 2 * write_units(size));
                    }
                }
            }
        }
        "TransactWriteItems" => {
            for item in request["TransactItems"].as_array().into_iter().flatten() {
                let (kind, body) = match item.as_object().and_then(|o| o.iter().next()) {
                    Some((kind, body)) => (kind.as_str(), body),
                    None => continue,
                };
                let table = body["TableName"].as_str().unwrap_or_default();
                let size = match kind {
                    "Put" => {
                        let size = item_size(&body["Item"]);
                        let before = sizes.get(table, &body["Item"]).unwrap_or(0);
                        sizes.set(table, &body["Item"], size);
                        size.max(before)
                    }
                    "Delete" => sizes.remove(table, &body["Key"]).unwrap_or(0),
                    _ => sizes
                        .get(table, &body["Key"])
                        .unwrap_or_else(|| item_size(&body["Key"])),
                };
                written(size, 4 * write_units(size));
            }
        }
        "GetItem" => {
            items_read(u64::from(answer["Item"].is_object()));
            read(read_cost(item_size(&answer["Item"]), consistent));
        }
        "BatchGetItem" => {
            for (table, asked) in request["RequestItems"].as_object().into_iter().flatten() {
                let consistent = asked["ConsistentRead"].as_bool().unwrap_or(false);
                let returned = answer["Responses"][table]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let keys = asked["Keys"].as_array().map_or(0, Vec::len);
                let unprocessed = answer["UnprocessedKeys"][table]["Keys"]
                    .as_array()
                    .map_or(0, Vec::len);
                items_read(returned.len() as u64);
                for item in &returned {
                    read(read_cost(item_size(item), consistent));
                }
                let missing = keys.saturating_sub(returned.len() + unprocessed) as u64;
                read(missing * read_cost(0, consistent));
            }
        }
        "Query" | "Scan" => {
            items_read(answer["ScannedCount"].as_u64().unwrap_or(0));
            let bytes = match answer["Items"].as_array() {
                Some(items) => items.iter().map(item_size).sum(),
                None => answer["Count"].as_u64().unwrap_or(0) * COUNTED_ITEM_BYTES,
            };
            read(read_cost(bytes, consistent));
        }
        "TransactGetItems" => {
            for item in answer["Responses"].as_array().into_iter().flatten() {
                items_read(1);
                read(2 * read_cost(item_size(&item["Item"]), true));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sizes as DynamoDB's documentation works them out.
    #[test]
    fn items_are_sized_as_dynamodb_sizes_them() {
        // "pk" (2) + "abc" (3) + "n" (1) + 12345 (3 digits pairs + 1 = 4).
        let item = json!({"pk": {"S": "abc"}, "n": {"N": "12345"}});
        assert_eq!(item_size(&item), 2 + 3 + 1 + 4);
        // Binary is its decoded length: "AAAA" is 3 bytes.
        assert_eq!(item_size(&json!({"b": {"B": "AAAA"}})), 1 + 3);
        assert_eq!(item_size(&json!({"b": {"B": "AA=="}})), 1 + 1);
        // A map: 3 + per field 1 + name + value.
        let map = json!({"m": {"M": {"a": {"BOOL": true}}}});
        assert_eq!(item_size(&map), 1 + 3 + 1 + 1 + 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(read_units(0), 1);
        assert_eq!(read_units(4097), 2);
    }

    /// What real DynamoDB refuses, and moto lets through.
    #[test]
    fn what_dynamodb_refuses_is_refused() {
        let big = json!({"Item": {"pk": {"S": "x"}, "b": {"S": "y".repeat(410 * 1024)}}});
        assert!(refusal("PutItem", &big)
            .unwrap_err()
            .contains("maximum allowed size"));
        let items: Vec<Value> = (0..101)
            .map(|i| json!({"Put": {"TableName": "t", "Item": {"pk": {"S": i.to_string()}}}}))
            .collect();
        let transaction = json!({ "TransactItems": items });
        assert!(refusal("TransactWriteItems", &transaction).is_err());
        let query = |lo: &str, hi: &str| {
            json!({
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {":pk": {"S": "p"}, ":lo": {"S": lo}, ":hi": {"S": hi}},
            })
        };
        assert!(refusal("Query", &query("b", "a")).is_err());
        assert!(refusal("Query", &query("a", "a")).is_ok());
    }

    /// Capacity by the published rules: a transactional write costs twice
    /// a standard one, a delete costs the item it removes.
    #[test]
    fn capacity_follows_the_published_rules() {
        let usage = Usage::default();
        let mut sizes = Sizes::default();
        let item = json!({"pk": {"S": "a"}, "sk": {"S": "b"}, "body": {"S": "z".repeat(3000)}});
        count(
            "PutItem",
            &json!({"TableName": "t", "Item": item}),
            &json!({}),
            &mut sizes,
            &usage,
        );
        assert_eq!(usage.write_units(), 3.0);
        let key = json!({"pk": {"S": "a"}, "sk": {"S": "b"}});
        count(
            "DeleteItem",
            &json!({"TableName": "t", "Key": key}),
            &json!({}),
            &mut sizes,
            &usage,
        );
        assert_eq!(usage.write_units(), 6.0, "a delete costs the item's size");
        let transaction = json!({"TransactItems": [
            {"Put": {"TableName": "t", "Item": {"pk": {"S": "c"}, "sk": {"S": "d"}}}},
        ]});
        count(
            "TransactWriteItems",
            &transaction,
            &json!({}),
            &mut sizes,
            &usage,
        );
        assert_eq!(usage.write_units(), 8.0, "transactional: two units per KB");
        let get = json!({"TableName": "t", "ConsistentRead": true});
        count(
            "GetItem",
            &get,
            &json!({"Item": {"pk": {"S": "c"}}}),
            &mut sizes,
            &usage,
        );
        assert_eq!(usage.read_units(), 1.0);
        count(
            "GetItem",
            &json!({"TableName": "t"}),
            &json!({}),
            &mut sizes,
            &usage,
        );
        assert_eq!(usage.read_units(), 1.5, "eventually consistent: half");
    }
}
