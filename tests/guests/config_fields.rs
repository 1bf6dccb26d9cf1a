//! Flat-JSON config lookups shared by the test guests (enough for their test configs; real
//! scripts use a JSON library).

/// The string value of `"key":"..."` in a flat JSON object.
pub fn string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = json[start..].find('"')? + start;
    Some(json[start..end].to_string())
}

/// The number value of `"key":123` in a flat JSON object.
pub fn number_field(json: &str, key: &str) -> Option<u64> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}
