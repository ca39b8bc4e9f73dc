//! Wire size of one telemetry message: postcard envelope vs the common JSON shape, and bytes per
//! site per day at one message a minute (payload, and payload plus MQTT PUBLISH framing).

use cuntong_benches::{as_platform_json, typical_batch};
use cuntong_core::envelope::encode;
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, Topic};

/// Fixed header (2), topic length (2), packet id (2) of a QoS 1 PUBLISH with a short payload,
/// plus the broker's 4-byte PUBACK.
const MQTT_OVERHEAD: usize = 2 + 2 + 2 + 4;

fn main() -> anyhow::Result<()> {
    let env = typical_batch(1440, 1_763_798_400_000);
    let postcard = encode(&env)?.len();
    let json = as_platform_json(&env).len();
    let id: TerminalId = "130102001001-main".parse()?;
    let topic = Topic::terminal(&id, Channel::Telemetry).to_string().len();
    let per_msg = |payload: usize| payload + topic + MQTT_OVERHEAD;
    println!("one message, 8 metrics");
    println!("  postcard envelope   {postcard:>6} bytes");
    println!("  platform JSON       {json:>6} bytes");
    println!(
        "  ratio               {:>6.1} %   (target <= 25 %)",
        100.0 * postcard as f64 / json as f64
    );
    println!("per site per day, one message a minute (1440)");
    println!(
        "  payload             postcard {:>8} B   JSON {:>8} B",
        postcard * 1440,
        json * 1440
    );
    println!(
        "  with MQTT framing   postcard {:>8} B   JSON {:>8} B   (topic {topic} B)",
        per_msg(postcard) * 1440,
        per_msg(json) * 1440
    );
    println!(
        "  ratio with framing  {:>6.1} %",
        100.0 * per_msg(postcard) as f64 / per_msg(json) as f64
    );
    Ok(())
}
