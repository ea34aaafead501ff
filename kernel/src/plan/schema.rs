//! The plan file's schema: the legacy plan orchestrator's JSON plan (seed 001) as a superset,
//! as serde types (unknown fields refused) that also derive the JSON Schema editors use.

use std::collections::BTreeMap;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

/// A Hive plan: steps with dependencies, run as a DAG. JSON, YAML or TOML.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Hive plan")]
pub(crate) struct PlanFile {
    /// The JSON Schema this file follows (for editors; ignored by Hive).
    #[serde(rename = "$schema", default)]
    #[allow(dead_code)] // accepted for editors, not used
    pub(crate) schema: Option<String>,
    /// The plan's identifier (for example `PLAN-SAFE-MERGE`).
    pub(crate) plan_id: String,
    /// The plan's version (a string, or a number).
    pub(crate) version: Scalar,
    /// What the plan does.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// Settings for the whole run.
    #[serde(default)]
    pub(crate) globals: Globals,
    /// Default values of `${VAR}` variables (`--var K=V` wins).
    #[serde(default)]
    #[allow(dead_code)] // read before deserialization (variables are substituted first)
    pub(crate) vars: BTreeMap<String, Scalar>,
    /// The steps, in any order (dependencies decide the order of execution).
    pub(crate) steps: Vec<StepDef>,
    /// Free-form data kept with the run (for example `project`, `phase_id`).
    #[serde(default)]
    pub(crate) metadata: Option<Value>,
}

/// `globals`: settings for the whole run.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Globals {
    /// Steps running at once (`--max-concurrency` wins). Default 4.
    #[serde(default)]
    pub(crate) max_concurrency: Option<Num<u32>>,
    /// Timeout of each attempt of a step that sets no `timeout_sec`. Default 300.
    #[serde(default)]
    pub(crate) default_timeout_sec: Option<Num<f64>>,
}

/// One step: a command (or a task for an agent of a role) and how to treat it. The rare
/// fields are boxed: a large plan holds thousands of these while it is read.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StepDef {
    /// Unique within the plan: letters, digits, `_` and `-`.
    pub(crate) id: String,
    /// A label for people (default: the id).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// The program to run (a line with spaces and no `args` runs through `/bin/sh -c`).
    #[serde(default)]
    pub(crate) command: Option<String>,
    /// Its arguments.
    #[serde(default)]
    pub(crate) args: Vec<Scalar>,
    /// Run on an agent of this role (a pool of `--config`) instead of the local process agent.
    #[serde(default)]
    pub(crate) role: Option<String>,
    /// The JSON payload for the agent of `role` (instead of a command).
    #[serde(default)]
    pub(crate) task: Option<Box<Value>>,
    /// Extra environment variables of the command.
    #[serde(default)]
    pub(crate) env: BTreeMap<String, Scalar>,
    /// Working directory of the command (relative to where `hive` was started).
    #[serde(default)]
    pub(crate) cwd: Option<String>,
    /// Steps that must end before this one starts.
    #[serde(default)]
    pub(crate) depends_on: Vec<String>,
    /// Limit of each attempt, in seconds.
    #[serde(default)]
    pub(crate) timeout_sec: Option<Num<f64>>,
    /// Retries after a failed attempt (default 0).
    #[serde(default)]
    pub(crate) retries: Option<Num<u32>>,
    /// Seconds before a retry (default 0); the first delay with `backoff: exponential`.
    #[serde(default)]
    pub(crate) retry_delay_sec: Option<Num<f64>>,
    /// How the retry delay grows.
    #[serde(default)]
    pub(crate) backoff: Option<BackoffKind>,
    /// Randomisation of the retry delay.
    #[serde(default)]
    pub(crate) jitter: Option<JitterKind>,
    /// Whether this step's failure fails the run (default true). With `on_failure: abort`, a
    /// critical failure also cancels the steps already running.
    #[serde(default)]
    pub(crate) critical: Option<Num<bool>>,
    /// What this step's failure does to the rest of the run (default `abort`).
    #[serde(default)]
    pub(crate) on_failure: Option<OnFailure>,
    /// Run only if this expression over earlier steps holds (see docs/plans.md).
    #[serde(default)]
    pub(crate) when: Option<String>,
    /// The outputs this step emits, which later steps use as `${steps.ID.outputs.KEY}`: a list
    /// of names, or a map of name to description.
    #[serde(default)]
    pub(crate) outputs: Option<Box<OutputsDef>>,
    /// Run this step once per item: a list, or `${steps.ID.outputs.KEY}` naming a JSON array.
    /// Each run sees `${item}` (`${item.KEY}` for objects) and `${index}`.
    #[serde(default)]
    pub(crate) for_each: Option<Box<ForEachDef>>,
    /// Reuse an earlier success with the same command, args, env and input files: `true`, or
    /// `{inputs: [paths or globs], key: extra}`.
    #[serde(default)]
    pub(crate) cache: Option<Box<CacheDef>>,
    /// Free-form data (kept in the plan file, not used by Hive).
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) metadata: Option<Box<Value>>,
}

/// What a step's failure does to the rest of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Cancel the steps not yet started (and, if the step is critical, the running ones).
    Abort,
    /// Skip every step that depends on this one, transitively; the others go on.
    SkipDependents,
    /// Go on as if it had succeeded.
    Continue,
}

impl OnFailure {
    /// The snake_case word.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Abort => "abort",
            OnFailure::SkipDependents => "skip_dependents",
            OnFailure::Continue => "continue",
        }
    }
}

/// How a retry delay grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BackoffKind {
    /// `retry_delay_sec` every time.
    Fixed,
    /// `retry_delay_sec` doubling after each attempt, at most an hour.
    Exponential,
}

/// Randomisation of a retry delay `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JitterKind {
    /// Exactly `d`.
    None,
    /// Uniform in `[0, d]`.
    Full,
    /// Uniform in `[d/2, d]`.
    Equal,
}

/// A string, number or boolean where a string is meant (`version`, `args`, `env`, `vars`);
/// numbers and booleans are taken as JSON writes them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scalar(pub(crate) String);

impl JsonSchema for Scalar {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Scalar".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": ["string", "number", "boolean"]})
    }
}

impl Scalar {
    /// The text.
    pub(crate) fn text(&self) -> String {
        self.0.clone()
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            other => Err(de::Error::custom(format!(
                "invalid type: {}, expected a string (or a number or boolean)",
                kind(&other)
            ))),
        }
    }
}

/// A number or boolean, also accepted as a string holding one (so that `"${N}"` works).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Num<T>(pub(crate) T);

impl<T: JsonSchema> JsonSchema for Num<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Num_{}", T::schema_name()).into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let inner = g.subschema_for::<T>();
        schemars::json_schema!({
            "anyOf": [inner, {"type": "string", "description": "a `${VAR}` holding the value"}]
        })
    }
}

impl<'de, T> Deserialize<'de> for Num<T>
where
    T: serde::de::DeserializeOwned + FromStr,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => s.trim().parse::<T>().map(Num).map_err(|_| {
                de::Error::custom(format!(
                    "invalid value: string {s:?}, expected {}",
                    short_type_name::<T>()
                ))
            }),
            other => T::deserialize(other).map(Num).map_err(de::Error::custom),
        }
    }
}

fn short_type_name<T>() -> &'static str {
    match std::any::type_name::<T>() {
        "u32" => "a non-negative integer",
        "f64" => "a number",
        "bool" => "true or false",
        other => other,
    }
}

/// `outputs`: names, or names with descriptions.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(untagged)]
pub(crate) enum OutputsDef {
    /// The names.
    Names(Vec<String>),
    /// Name to description.
    Described(BTreeMap<String, String>),
}

impl OutputsDef {
    pub(crate) fn names(&self) -> Vec<String> {
        match self {
            OutputsDef::Names(n) => n.clone(),
            OutputsDef::Described(m) => m.keys().cloned().collect(),
        }
    }
}

impl<'de> Deserialize<'de> for OutputsDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s),
                    other => Err(de::Error::custom(format!(
                        "invalid type: {}, expected output names (strings)",
                        kind(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(OutputsDef::Names),
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    Value::Null => Ok((k, String::new())),
                    other => Err(de::Error::custom(format!(
                        "invalid type: {} for output `{k}`, expected a description (string)",
                        kind(&other)
                    ))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(OutputsDef::Described),
            other => Err(de::Error::custom(format!(
                "invalid type: {}, expected a list of output names or a map of name to description",
                kind(&other)
            ))),
        }
    }
}

/// `for_each`: a list of items, or a reference to a list.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(untagged)]
pub(crate) enum ForEachDef {
    /// The items.
    Items(Vec<Value>),
    /// `${steps.ID.outputs.KEY}`, a JSON array output by an earlier step.
    From(String),
}

impl<'de> Deserialize<'de> for ForEachDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Array(items) => Ok(ForEachDef::Items(items)),
            Value::String(s) => Ok(ForEachDef::From(s)),
            other => Err(de::Error::custom(format!(
                "invalid type: {}, expected a list of items or a `${{steps.ID.outputs.KEY}}` reference",
                kind(&other)
            ))),
        }
    }
}

/// `cache`: `true`, or the inputs that make up the key.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(untagged)]
pub(crate) enum CacheDef {
    /// On (key: the command, its args and env) or off.
    Enabled(bool),
    /// On, with input files.
    With(CacheWith),
}

/// `cache: {inputs, key}`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheWith {
    /// Files, directories or glob patterns whose contents are part of the key (relative to
    /// the step's working directory).
    #[serde(default)]
    pub(crate) inputs: Vec<String>,
    /// Any extra text to mix into the key (bump it to invalidate).
    #[serde(default)]
    pub(crate) key: Option<String>,
}

impl<'de> Deserialize<'de> for CacheDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(b) => Ok(CacheDef::Enabled(b)),
            v @ Value::Object(_) => CacheWith::deserialize(v)
                .map(CacheDef::With)
                .map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "invalid type: {}, expected true, false or {{\"inputs\": [...], \"key\": ...}}",
                kind(&other)
            ))),
        }
    }
}

/// "a string", "an array"... for messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON Schema of plan files (draft-07, which most editors support).
pub(crate) fn json_schema() -> Value {
    let g = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = g.into_root_schema_for::<PlanFile>();
    schema.to_value()
}
