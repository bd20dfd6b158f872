//! The agent's TOML configuration, validated: every error names the key at fault.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// A configuration error: the key at fault and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{key}`: {message}")]
pub struct ConfigError {
    /// The key, e.g. `sensors[2].pin`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// What to do with a new reading when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Delete the oldest unsent readings to make room (the recent past matters most).
    DropOldest,
    /// Keep what is stored and drop the new reading (the oldest data matters most).
    DropNewest,
}

/// A pull resistor on a GPIO input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// None.
    #[default]
    None,
    /// Pull-up.
    Up,
    /// Pull-down.
    Down,
}

/// One sensor.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SensorConfig {
    /// A Bosch BME280 on I2C: temperature (Cel), humidity (%RH), pressure (hPa).
    Bme280 {
        /// I2C bus number (`/dev/i2c-<bus>`; 1 on a Raspberry Pi).
        #[serde(default = "default_i2c_bus")]
        i2c_bus: u8,
        /// I2C address: 0x76 (SDO to ground) or 0x77.
        #[serde(default = "default_bme280_address")]
        address: u8,
        /// Prefix of the metric names (`<prefix>temperature`, ...); empty by default.
        #[serde(default)]
        prefix: String,
    },
    /// A Maxim DS18B20 on 1-Wire, read through the kernel's w1-gpio driver.
    Ds18b20 {
        /// The device id under `/sys/bus/w1/devices`, e.g. `28-0000075b5a2b`.
        device: String,
        /// Metric name.
        #[serde(default = "default_temperature")]
        metric: String,
        /// Where the kernel lists 1-Wire devices (for tests).
        #[serde(default = "default_w1_dir")]
        w1_dir: PathBuf,
    },
    /// A digital input on a GPIO pin (BCM numbering), reported as a flag.
    GpioInput {
        /// BCM pin number.
        pin: u8,
        /// Metric name.
        metric: String,
        /// Pull resistor.
        #[serde(default)]
        pull: Pull,
        /// Report `true` when the pin reads low.
        #[serde(default)]
        active_low: bool,
    },
    /// A simulated number that wanders between `min` and `max`: the agent runs on any machine.
    Simulated {
        /// Metric name.
        metric: String,
        /// Unit, e.g. "Cel".
        #[serde(default)]
        unit: String,
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
    },
}

fn default_i2c_bus() -> u8 {
    1
}
fn default_bme280_address() -> u8 {
    0x76
}
fn default_temperature() -> String {
    "temperature".into()
}
fn default_w1_dir() -> PathBuf {
    PathBuf::from("/sys/bus/w1/devices")
}

/// A digital output (a relay) that commands switch.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Name used in commands: `<name>.on`, `<name>.off`, `<name>.toggle`.
    pub name: String,
    /// BCM pin number; absent for a simulated output (it only logs).
    pub pin: Option<u8>,
    /// The relay closes when the pin is driven low.
    #[serde(default)]
    pub active_low: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutbox {
    max_readings: Option<u64>,
    when_full: Option<WhenFull>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvisioning {
    listen: Option<String>,
    enrollment_secret_file: Option<PathBuf>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    sample_interval_secs: Option<u64>,
    upload_interval_secs: Option<u64>,
    max_backoff_secs: Option<u64>,
    #[serde(default)]
    outbox: FileOutbox,
    #[serde(default)]
    provisioning: FileProvisioning,
    #[serde(default)]
    sensors: Vec<SensorConfig>,
    #[serde(default)]
    outputs: Vec<OutputConfig>,
}

/// The provisioning listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningConfig {
    /// Where EdgeService listens.
    pub listen: std::net::SocketAddr,
    /// The enrollment secret shared with the operator.
    pub enrollment_secret_file: PathBuf,
    /// TLS certificate and key (PEM); without them the listener is plaintext and accepts only
    /// HMAC proofs.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the outbox and credentials live.
    pub state_dir: PathBuf,
    /// How often sensors are read.
    pub sample_interval: Duration,
    /// How often the agent wakes to upload.
    pub upload_interval: Duration,
    /// Longest wait between attempts while the platform is unreachable.
    pub max_backoff: Duration,
    /// Most readings the outbox keeps.
    pub outbox_max_readings: u64,
    /// What happens to a reading when the outbox is full.
    pub when_full: WhenFull,
    /// The provisioning listener; none when the agent is provisioned by hand
    /// (`sipmba-edge provision`).
    pub provisioning: Option<ProvisioningConfig>,
    /// The sensors, read in order at every sample.
    pub sensors: Vec<SensorConfig>,
    /// The outputs commands switch.
    pub outputs: Vec<OutputConfig>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn secs(
    key: &str,
    value: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !(min..=max).contains(&v) {
        return Err(ConfigError::new(
            key,
            format!("is {v}; it must be between {min} and {max}"),
        ));
    }
    Ok(Duration::from_secs(v))
}

/// The dotted key of the `key = value` line holding byte `at` of `text`, with its table
/// (`sensors[1].pin`); `None` outside such a line.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() {
        return None; // `= value`: no key to name; the caller names the line
    }
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for header in text[..line_start].lines().map(str::trim) {
        if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
            let n = arrays.entry(name.trim().to_owned()).or_insert(0);
            table = format!("{}[{}]", name.trim(), *n);
            *n += 1;
        } else if let Some(name) = header.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            table = name.trim().to_owned();
        }
    }
    Some(if table.is_empty() {
        key.to_owned()
    } else {
        format!("{table}.{key}")
    })
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            // Inside a sensor (a tagged table) the error points at the table: find the unknown
            // key's line by its name.
            let by_span = e.span().and_then(|span| key_at(text, span.start));
            let by_name = || {
                let name = e.message().split('`').nth(1)?;
                let mut offset = 0;
                for line in text.split_inclusive('\n') {
                    if line.split_once('=').is_some_and(|(k, _)| k.trim() == name) {
                        return Some(offset);
                    }
                    offset += line.len();
                }
                None
            };
            // Failing a key, the line: counted in bytes, so any offset is safe.
            let line = || {
                e.span().map(|span| {
                    let before = &text.as_bytes()[..span.start.min(text.len())];
                    format!(
                        "line {}",
                        before.iter().filter(|b| **b == b'\n').count() + 1
                    )
                })
            };
            let key = by_span
                .or_else(|| by_name().and_then(|at| key_at(text, at)))
                .or_else(line)
                .unwrap_or_else(|| "<file>".into());
            ConfigError::new(key, e.message().trim().to_owned())
        })?;
        let sample_interval = secs(
            "sample_interval_secs",
            file.sample_interval_secs,
            60,
            1,
            86_400,
        )?;
        let upload_interval = secs(
            "upload_interval_secs",
            file.upload_interval_secs,
            900,
            1,
            7 * 86_400,
        )?;
        let max_backoff = secs("max_backoff_secs", file.max_backoff_secs, 300, 1, 86_400)?;
        let outbox_max_readings = file.outbox.max_readings.unwrap_or(1_000_000);
        if !(10..=100_000_000).contains(&outbox_max_readings) {
            return Err(ConfigError::new(
                "outbox.max_readings",
                format!("is {outbox_max_readings}; it must be between 10 and 100000000"),
            ));
        }
        let provisioning = match file.provisioning {
            FileProvisioning {
                listen: None,
                enrollment_secret_file: None,
                tls_cert_file: None,
                tls_key_file: None,
            } => None,
            p => {
                let listen_text = p.listen.unwrap_or_else(|| "0.0.0.0:7443".into());
                let listen = listen_text.parse().map_err(|_| {
                    ConfigError::new(
                        "provisioning.listen",
                        format!("{listen_text:?} is not a socket address like 0.0.0.0:7443"),
                    )
                })?;
                let enrollment_secret_file = p.enrollment_secret_file.ok_or_else(|| {
                    ConfigError::new(
                        "provisioning.enrollment_secret_file",
                        "is not set: the provisioning listener authenticates the operator with it",
                    )
                })?;
                let tls = match (p.tls_cert_file, p.tls_key_file) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    (Some(_), None) => {
                        return Err(ConfigError::new(
                            "provisioning.tls_key_file",
                            "is not set, but tls_cert_file is: set both or neither",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::new(
                            "provisioning.tls_cert_file",
                            "is not set, but tls_key_file is: set both or neither",
                        ));
                    }
                };
                Some(ProvisioningConfig {
                    listen,
                    enrollment_secret_file,
                    tls,
                })
            }
        };
        let mut metrics = HashSet::new();
        for (i, sensor) in file.sensors.iter().enumerate() {
            let names: Vec<String> = match sensor {
                SensorConfig::Bme280 {
                    prefix, address, ..
                } => {
                    if ![0x76, 0x77].contains(address) {
                        return Err(ConfigError::new(
                            format!("sensors[{i}].address"),
                            format!("is {address:#04x}; a BME280 answers at 0x76 or 0x77"),
                        ));
                    }
                    ["temperature", "humidity", "pressure"]
                        .map(|m| format!("{prefix}{m}"))
                        .to_vec()
                }
                SensorConfig::Ds18b20 { device, metric, .. } => {
                    if !device.starts_with("28-") || device.contains('/') {
                        return Err(ConfigError::new(
                            format!("sensors[{i}].device"),
                            format!(
                                "{device:?} is not a DS18B20 id like \"28-0000075b5a2b\" (see /sys/bus/w1/devices)"
                            ),
                        ));
                    }
                    vec![metric.clone()]
                }
                SensorConfig::GpioInput { pin, metric, .. } => {
                    if *pin > 27 {
                        return Err(ConfigError::new(
                            format!("sensors[{i}].pin"),
                            format!("is {pin}; a Raspberry Pi has BCM pins 0 to 27"),
                        ));
                    }
                    vec![metric.clone()]
                }
                SensorConfig::Simulated {
                    metric, min, max, ..
                } => {
                    if !(min.is_finite() && max.is_finite() && min <= max) {
                        return Err(ConfigError::new(
                            format!("sensors[{i}].max"),
                            format!("min {min} and max {max} must be finite with min <= max"),
                        ));
                    }
                    vec![metric.clone()]
                }
            };
            for name in names {
                if !valid_name(&name) {
                    return Err(ConfigError::new(
                        format!("sensors[{i}]"),
                        format!("metric name {name:?} is not 1 to 64 characters of [A-Za-z0-9._-]"),
                    ));
                }
                if !metrics.insert(name.clone()) {
                    return Err(ConfigError::new(
                        format!("sensors[{i}]"),
                        format!("metric {name:?} is reported by an earlier sensor too; rename one"),
                    ));
                }
            }
        }
        let mut outputs = HashSet::new();
        let mut pins = HashSet::new();
        for (i, output) in file.outputs.iter().enumerate() {
            if !valid_name(&output.name) || output.name.contains('.') {
                return Err(ConfigError::new(
                    format!("outputs[{i}].name"),
                    format!(
                        "{:?} is not 1 to 64 characters of [A-Za-z0-9_-]",
                        output.name
                    ),
                ));
            }
            if !outputs.insert(output.name.clone()) {
                return Err(ConfigError::new(
                    format!("outputs[{i}].name"),
                    format!("{:?} is used by an earlier output", output.name),
                ));
            }
            if let Some(pin) = output.pin {
                if pin > 27 {
                    return Err(ConfigError::new(
                        format!("outputs[{i}].pin"),
                        format!("is {pin}; a Raspberry Pi has BCM pins 0 to 27"),
                    ));
                }
                if !pins.insert(pin) {
                    return Err(ConfigError::new(
                        format!("outputs[{i}].pin"),
                        format!("pin {pin} drives an earlier output too"),
                    ));
                }
            }
        }
        for (i, sensor) in file.sensors.iter().enumerate() {
            if let SensorConfig::GpioInput { pin, .. } = sensor
                && pins.contains(pin)
            {
                return Err(ConfigError::new(
                    format!("sensors[{i}].pin"),
                    format!("pin {pin} is an output too"),
                ));
            }
        }
        Ok(Self {
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/sipmba-edge")),
            sample_interval,
            upload_interval,
            max_backoff,
            outbox_max_readings,
            when_full: file.outbox.when_full.unwrap_or(WhenFull::DropOldest),
            provisioning,
            sensors: file.sensors,
            outputs: file.outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[track_caller]
    fn refused(text: &str, key: &str, needle: &str) {
        let e = Config::parse(text).unwrap_err();
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }

    #[test]
    fn a_full_configuration_is_read() {
        let c = Config::parse(
            r#"
state_dir = "/tmp/edge"
sample_interval_secs = 5
upload_interval_secs = 60
[outbox]
max_readings = 1000
when_full = "drop-newest"
[provisioning]
listen = "127.0.0.1:7443"
enrollment_secret_file = "/etc/sipmba-edge/enrollment.secret"
[[sensors]]
kind = "bme280"
address = 0x77
[[sensors]]
kind = "ds18b20"
device = "28-0000075b5a2b"
metric = "water_temperature"
[[sensors]]
kind = "gpio_input"
pin = 17
metric = "door_open"
pull = "up"
active_low = true
[[sensors]]
kind = "simulated"
metric = "light"
unit = "lx"
min = 0
max = 1000
[[outputs]]
name = "fan"
pin = 27
"#,
        )
        .unwrap();
        assert_eq!(c.sample_interval, Duration::from_secs(5));
        assert_eq!(c.when_full, WhenFull::DropNewest);
        assert_eq!(c.sensors.len(), 4);
        assert_eq!(c.outputs[0].pin, Some(27));
        assert!(c.provisioning.unwrap().tls.is_none());
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let c = Config::parse(include_str!("../config.example.toml")).unwrap();
        assert_eq!(c.sensors.len(), 3);
        assert_eq!(c.outputs[0].name, "fan");
        assert!(c.provisioning.unwrap().tls.is_some());
    }

    /// Found by the `config_toml` fuzz target: a line with no key before its `=` was reported
    /// under an empty key.
    #[test]
    fn a_line_without_a_key_is_named_by_its_number() {
        refused("state_dir = \"/tmp\"\n=address = 0x76\n", "line 2", "");
        let e = Config::parse("\u{e9}\n= 1").unwrap_err();
        assert!(!e.key.is_empty(), "{e}");
    }

    #[test]
    fn every_error_names_its_key() {
        refused(
            "sample_interval_secs = 0",
            "sample_interval_secs",
            "between 1",
        );
        refused(
            "sampel_interval_secs = 5",
            "sampel_interval_secs",
            "unknown field",
        );
        refused(
            "[outbox]\nmax_readings = 1",
            "outbox.max_readings",
            "between 10",
        );
        refused(
            "[outbox]\nwhen_full = \"panic\"",
            "outbox.when_full",
            "drop-oldest",
        );
        refused(
            "[[sensors]]\nkind = \"simulated\"\nmetric = \"a\"\nmin = 0\nmax = 1\n[[sensors]]\nkind = \"bme280\"\naddres = 0x76",
            "sensors[1].addres",
            "unknown field",
        );
        refused(
            "[[sensors]]\nkind = \"bme280\"\naddress = 0x10",
            "sensors[0].address",
            "0x76 or 0x77",
        );
        refused(
            "[[sensors]]\nkind = \"gpio_input\"\npin = 40\nmetric = \"x\"",
            "sensors[0].pin",
            "0 to 27",
        );
        refused(
            "[[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nmin = 2\nmax = 1\n[[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nmin = 0\nmax = 1",
            "sensors[0].max",
            "min <= max",
        );
        refused(
            "[[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nmin = 0\nmax = 1\n[[sensors]]\nkind = \"simulated\"\nmetric = \"t\"\nmin = 0\nmax = 1",
            "sensors[1]",
            "earlier sensor",
        );
        refused(
            "[[outputs]]\nname = \"fan\"\npin = 5\n[[outputs]]\nname = \"pump\"\npin = 5",
            "outputs[1].pin",
            "earlier output",
        );
        refused(
            "[provisioning]\nlisten = \"0.0.0.0:7443\"",
            "provisioning.enrollment_secret_file",
            "is not set",
        );
    }
}
