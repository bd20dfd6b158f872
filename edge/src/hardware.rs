//! Sensors and outputs. Drivers are written against the embedded-hal traits (I2C, digital pins,
//! delays); rppal provides them on a Raspberry Pi and is the only place that knows the board, so
//! another HAL can replace it. Hardware that cannot be opened is reported with what to check and
//! retried later: the agent keeps running with the rest.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use embedded_hal::digital::{InputPin, OutputPin};
use rand::Rng;
use sipmba_proto::v1 as pb;

use crate::config::{OutputConfig, Pull, SensorConfig};

/// Something that produces metrics when read.
pub trait Sensor: Send {
    /// Reads the current values.
    fn read(&mut self) -> Result<Vec<pb::Metric>, String>;
}

/// Something a command switches on and off.
pub trait Switch: Send {
    /// Drives the output.
    fn set(&mut self, on: bool) -> Result<(), String>;
    /// The state it was last driven to.
    fn is_on(&self) -> bool;
}

fn number(name: &str, value: f64, unit: &str) -> pb::Metric {
    pb::Metric {
        name: name.to_owned(),
        value: Some(pb::metric::Value::Number(value)),
        unit: unit.to_owned(),
    }
}

/// Blocking delays for drivers.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdDelay;

impl embedded_hal::delay::DelayNs for StdDelay {
    fn delay_ns(&mut self, ns: u32) {
        std::thread::sleep(Duration::from_nanos(ns.into()));
    }
}

/// A BME280 on any embedded-hal I2C bus.
pub struct Bme280<I2C> {
    device: bme280::i2c::BME280<I2C>,
    prefix: String,
}

impl<I2C: embedded_hal::i2c::I2c + Send> Bme280<I2C> {
    /// Initializes the sensor at `address` on `bus`.
    pub fn new(bus: I2C, address: u8, prefix: &str) -> Result<Self, String> {
        let mut device = bme280::i2c::BME280::new(bus, address);
        device
            .init(&mut StdDelay)
            .map_err(|e| format!("the BME280 at {address:#04x} does not answer: {e:?}"))?;
        Ok(Self {
            device,
            prefix: prefix.to_owned(),
        })
    }
}

impl<I2C: embedded_hal::i2c::I2c + Send> Sensor for Bme280<I2C> {
    fn read(&mut self) -> Result<Vec<pb::Metric>, String> {
        let m = self
            .device
            .measure(&mut StdDelay)
            .map_err(|e| format!("BME280 measurement failed: {e:?}"))?;
        let p = &self.prefix;
        Ok(vec![
            number(&format!("{p}temperature"), f64::from(m.temperature), "Cel"),
            number(&format!("{p}humidity"), f64::from(m.humidity), "%RH"),
            number(
                &format!("{p}pressure"),
                f64::from(m.pressure) / 100.0,
                "hPa",
            ),
        ])
    }
}

/// A DS18B20 read through the kernel's 1-Wire driver (`w1_slave`).
pub struct Ds18b20 {
    path: PathBuf,
    metric: String,
}

impl Ds18b20 {
    /// The sensor `device` under `w1_dir`.
    pub fn new(w1_dir: &std::path::Path, device: &str, metric: &str) -> Result<Self, String> {
        let path = w1_dir.join(device).join("w1_slave");
        if !path.exists() {
            return Err(format!(
                "1-Wire sensor {device} not found ({} is missing): is it wired to GPIO 4 with a \
                 4.7 kΩ pull-up, and is `dtoverlay=w1-gpio` in /boot/firmware/config.txt?",
                path.display()
            ));
        }
        Ok(Self {
            path,
            metric: metric.to_owned(),
        })
    }

    /// Parses a `w1_slave` file: the first line ends in YES when the CRC matched, the second
    /// holds `t=<millidegrees>`.
    pub fn parse(text: &str) -> Result<f64, String> {
        let mut lines = text.lines();
        let crc = lines.next().unwrap_or_default();
        if !crc.trim_end().ends_with("YES") {
            return Err("the DS18B20 reading failed its CRC check (loose wiring?)".into());
        }
        let milli = lines
            .next()
            .and_then(|l| l.rsplit_once("t="))
            .and_then(|(_, t)| t.trim().parse::<i64>().ok())
            .ok_or("the DS18B20 answer holds no temperature")?;
        // 85 °C exactly is the power-on value: the conversion did not run.
        if milli == 85_000 {
            return Err("the DS18B20 returned its power-on value (85 °C): check its power".into());
        }
        Ok(milli as f64 / 1000.0)
    }
}

impl Sensor for Ds18b20 {
    fn read(&mut self) -> Result<Vec<pb::Metric>, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        Ok(vec![number(&self.metric, Self::parse(&text)?, "Cel")])
    }
}

/// A digital input on any embedded-hal pin, reported as a flag.
pub struct DigitalInput<P> {
    pin: P,
    metric: String,
    active_low: bool,
}

impl<P: InputPin + Send> DigitalInput<P> {
    /// The input `pin`, reported as `metric`.
    pub fn new(pin: P, metric: &str, active_low: bool) -> Self {
        Self {
            pin,
            metric: metric.to_owned(),
            active_low,
        }
    }
}

impl<P: InputPin + Send> Sensor for DigitalInput<P> {
    fn read(&mut self) -> Result<Vec<pb::Metric>, String> {
        let high = self
            .pin
            .is_high()
            .map_err(|e| format!("reading the pin failed: {e:?}"))?;
        Ok(vec![pb::Metric {
            name: self.metric.clone(),
            value: Some(pb::metric::Value::Flag(high != self.active_low)),
            unit: String::new(),
        }])
    }
}

/// A number wandering between two bounds.
pub struct Simulated {
    metric: String,
    unit: String,
    min: f64,
    max: f64,
    value: f64,
}

impl Simulated {
    /// Starts in the middle of `[min, max]`.
    pub fn new(metric: &str, unit: &str, min: f64, max: f64) -> Self {
        Self {
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            min,
            max,
            value: (min + max) / 2.0,
        }
    }
}

impl Sensor for Simulated {
    fn read(&mut self) -> Result<Vec<pb::Metric>, String> {
        let step = (self.max - self.min) / 20.0;
        if step > 0.0 {
            self.value =
                (self.value + rand::thread_rng().gen_range(-step..=step)).clamp(self.min, self.max);
        }
        Ok(vec![number(&self.metric, self.value, &self.unit)])
    }
}

/// An output on any embedded-hal pin.
pub struct DigitalOutput<P> {
    pin: P,
    active_low: bool,
    on: bool,
}

impl<P: OutputPin + Send> DigitalOutput<P> {
    /// The output `pin`, switched off.
    pub fn new(pin: P, active_low: bool) -> Result<Self, String> {
        let mut output = Self {
            pin,
            active_low,
            on: false,
        };
        output.set(false)?;
        Ok(output)
    }
}

impl<P: OutputPin + Send> Switch for DigitalOutput<P> {
    fn set(&mut self, on: bool) -> Result<(), String> {
        let high = on != self.active_low;
        if high {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        }
        .map_err(|e| format!("driving the pin failed: {e:?}"))?;
        self.on = on;
        Ok(())
    }

    fn is_on(&self) -> bool {
        self.on
    }
}

/// An output without hardware: it remembers its state and logs.
#[derive(Debug, Default)]
pub struct SimulatedSwitch {
    on: bool,
}

impl Switch for SimulatedSwitch {
    fn set(&mut self, on: bool) -> Result<(), String> {
        self.on = on;
        Ok(())
    }

    fn is_on(&self) -> bool {
        self.on
    }
}

fn gpio() -> Result<rppal::gpio::Gpio, String> {
    rppal::gpio::Gpio::new().map_err(|e| {
        format!(
            "GPIO is not available ({e}): run on a Raspberry Pi as a user in the `gpio` group, \
             or use a `simulated` sensor"
        )
    })
}

/// Opens the hardware of a sensor.
pub fn open_sensor(config: &SensorConfig) -> Result<Box<dyn Sensor>, String> {
    Ok(match config {
        SensorConfig::Bme280 {
            i2c_bus,
            address,
            prefix,
        } => {
            let bus = rppal::i2c::I2c::with_bus(*i2c_bus).map_err(|e| {
                format!(
                    "I2C bus {i2c_bus} is not available ({e}): enable I2C (`raspi-config nonint do_i2c 0`) \
                     and check /dev/i2c-{i2c_bus}"
                )
            })?;
            Box::new(Bme280::new(bus, *address, prefix)?)
        }
        SensorConfig::Ds18b20 {
            device,
            metric,
            w1_dir,
        } => Box::new(Ds18b20::new(w1_dir, device, metric)?),
        SensorConfig::GpioInput {
            pin,
            metric,
            pull,
            active_low,
        } => {
            let pin = gpio()?
                .get(*pin)
                .map_err(|e| format!("GPIO {pin} is not available: {e}"))?;
            let pin = match pull {
                Pull::None => pin.into_input(),
                Pull::Up => pin.into_input_pullup(),
                Pull::Down => pin.into_input_pulldown(),
            };
            Box::new(DigitalInput::new(pin, metric, *active_low))
        }
        SensorConfig::Simulated {
            metric,
            unit,
            min,
            max,
        } => Box::new(Simulated::new(metric, unit, *min, *max)),
    })
}

/// Opens the hardware of an output.
pub fn open_switch(config: &OutputConfig) -> Result<Box<dyn Switch>, String> {
    match config.pin {
        None => Ok(Box::new(SimulatedSwitch::default())),
        Some(pin) => {
            let pin = gpio()?
                .get(pin)
                .map_err(|e| format!("GPIO {pin} is not available: {e}"))?
                .into_output();
            Ok(Box::new(DigitalOutput::new(pin, config.active_low)?))
        }
    }
}

/// How long a sensor that could not be opened waits before the next attempt.
pub const REOPEN_AFTER: Duration = Duration::from_secs(60);

/// A configured sensor: open, or failed and waiting to be tried again.
pub struct SensorSlot {
    config: SensorConfig,
    sensor: Option<Box<dyn Sensor>>,
    retry_at: Instant,
    failing: bool,
}

impl SensorSlot {
    /// The sensor of `config`, opened at the first read.
    pub fn new(config: SensorConfig) -> Self {
        Self {
            config,
            sensor: None,
            retry_at: Instant::now(),
            failing: false,
        }
    }

    /// Reads the sensor (opening it first if need be). Errors are logged once per failure
    /// streak, not at every sample.
    pub fn read(&mut self, index: usize) -> Vec<pb::Metric> {
        if self.sensor.is_none() && Instant::now() >= self.retry_at {
            match open_sensor(&self.config) {
                Ok(sensor) => self.sensor = Some(sensor),
                Err(e) => {
                    if !self.failing {
                        tracing::error!(sensor = index, error = %e, "sensor unavailable; retrying every minute");
                    }
                    self.failing = true;
                    self.retry_at = Instant::now() + REOPEN_AFTER;
                }
            }
        }
        let Some(sensor) = self.sensor.as_mut() else {
            return Vec::new();
        };
        match sensor.read() {
            Ok(metrics) => {
                if self.failing {
                    tracing::info!(sensor = index, "sensor readable again");
                }
                self.failing = false;
                metrics
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!(sensor = index, error = %e, "sensor read failed");
                }
                self.failing = true;
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ds18b20_answers_are_checked() {
        let ok = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert_eq!(Ds18b20::parse(ok).unwrap(), 23.125);
        let bad_crc =
            "72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n";
        assert!(Ds18b20::parse(bad_crc).unwrap_err().contains("CRC"));
        let power_on =
            "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n";
        assert!(Ds18b20::parse(power_on).unwrap_err().contains("power"));
        let negative =
            "5e ff 4b 46 7f ff 02 10 26 : crc=26 YES\n5e ff 4b 46 7f ff 02 10 26 t=-10125\n";
        assert_eq!(Ds18b20::parse(negative).unwrap(), -10.125);
    }

    #[test]
    fn a_missing_sensor_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let e = open_sensor(&SensorConfig::Ds18b20 {
            device: "28-000000000001".into(),
            metric: "t".into(),
            w1_dir: dir.path().to_owned(),
        })
        .err()
        .unwrap();
        assert!(e.contains("dtoverlay=w1-gpio"), "{e}");
        std::fs::create_dir(dir.path().join("28-000000000001")).unwrap();
        std::fs::write(
            dir.path().join("28-000000000001/w1_slave"),
            "aa : crc=1 YES\naa t=21500\n",
        )
        .unwrap();
        let mut slot = SensorSlot::new(SensorConfig::Ds18b20 {
            device: "28-000000000001".into(),
            metric: "water".into(),
            w1_dir: dir.path().to_owned(),
        });
        let metrics = slot.read(0);
        assert_eq!(metrics[0].value, Some(pb::metric::Value::Number(21.5)));
    }

    #[test]
    fn simulated_values_stay_in_bounds() {
        let mut s = Simulated::new("t", "Cel", 18.0, 26.0);
        for _ in 0..1000 {
            let m = s.read().unwrap();
            let Some(pb::metric::Value::Number(v)) = m[0].value else {
                panic!()
            };
            assert!((18.0..=26.0).contains(&v));
        }
    }
}
