//! The plugin config record's schema, in the shape of Keeper's `SaasConfigItem`.

/// The type of a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemType {
    Text,
    Multiline,
    Url,
    Int,
    Number,
    Bool,
    Enum,
    Secret,
}

/// One config item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigItem {
    pub id: &'static str,
    pub label: &'static str,
    pub desc: &'static str,
    pub is_secret: bool,
    pub item_type: ItemType,
    pub default_value: Option<&'static str>,
    pub enum_values: &'static [(&'static str, &'static str)],
    pub required: bool,
}

pub const IAM_USERNAME: &str = "IAM Username";
pub const CLIENT_ID: &str = "Client ID";
pub const CLIENT_SECRET: &str = "Client Secret";
pub const SESSION_TOKEN: &str = "Session Token";
pub const AWS_REGION: &str = "AWS Region";
pub const ENDPOINT_URL: &str = "AWS Endpoint URL";
pub const RETRY_DEADLINE: &str = "Retry Deadline Seconds";
pub const MAX_BACKOFF: &str = "Max Backoff Milliseconds";
pub const VERIFY_TIMEOUT: &str = "Verify Timeout Seconds";
pub const OLD_KEY_ACTION: &str = "Old Key Action";

const fn item(
    id: &'static str,
    label: &'static str,
    desc: &'static str,
    item_type: ItemType,
    default_value: Option<&'static str>,
) -> ConfigItem {
    ConfigItem {
        id,
        label,
        desc,
        is_secret: matches!(item_type, ItemType::Secret),
        item_type,
        default_value,
        enum_values: &[],
        required: false,
    }
}

/// The items, in the order `rotate-host config` asks for them.
pub const SCHEMA: &[ConfigItem] = &[
    item(
        "iam_username",
        IAM_USERNAME,
        "IAM user whose access key is rotated. Default: the PAM user's login.",
        ItemType::Text,
        None,
    ),
    item(
        "client_id",
        CLIENT_ID,
        "Access key id of the rotating identity. Required unless a PAM AWS Configuration gives it.",
        // A key id is an identifier (CloudTrail logs it); masking it would hide it from errors.
        ItemType::Text,
        None,
    ),
    item(
        "client_secret",
        CLIENT_SECRET,
        "Secret access key of the rotating identity. Required unless a PAM AWS Configuration gives it.",
        ItemType::Secret,
        None,
    ),
    item(
        "session_token",
        SESSION_TOKEN,
        "Session token, when the Client ID and Secret are temporary credentials (an assumed role).",
        ItemType::Secret,
        None,
    ),
    item(
        "aws_region",
        AWS_REGION,
        "AWS Region; picks the partition and the STS endpoint. Required unless a PAM AWS Configuration gives it.",
        ItemType::Text,
        None,
    ),
    item(
        "aws_endpoint_url",
        ENDPOINT_URL,
        "One endpoint for IAM and STS: a VPC endpoint, a private partition's endpoint or a local emulator.",
        ItemType::Url,
        None,
    ),
    item(
        "retry_deadline_seconds",
        RETRY_DEADLINE,
        "How long one call may keep retrying throttling, 5xx and connection failures.",
        ItemType::Int,
        Some("60"),
    ),
    item(
        "max_backoff_ms",
        MAX_BACKOFF,
        "The longest pause between two retries, in milliseconds.",
        ItemType::Int,
        Some("5000"),
    ),
    item(
        "verify_timeout_seconds",
        VERIFY_TIMEOUT,
        "How long to wait for a new key to work (IAM is eventually consistent).",
        ItemType::Int,
        Some("60"),
    ),
    ConfigItem {
        enum_values: &[
            ("delete", "delete the old key once the new one works"),
            (
                "deactivate",
                "set it Inactive; deleted after 'Inactive Grace Days' (needs iam:UpdateAccessKey)",
            ),
            (
                "retire-when-unused",
                "keep it active until IAM shows no use for 'Unused Hours', then deactivate it \
                 (needs iam:UpdateAccessKey and iam:GetAccessKeyLastUsed)",
            ),
        ],
        ..item(
            "old_key_action",
            OLD_KEY_ACTION,
            "What happens to the old key once the new one works.",
            ItemType::Enum,
            Some("delete"),
        )
    },
];
