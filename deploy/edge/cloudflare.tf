# Cloudflare in front of the ALB (alb.tf): the API's host name proxied ("orange cloud").
# Terraform, Cloudflare provider >= 5 (rulesets as lists of objects, cloudflare_zone_setting).
# Readable as it is; deploy/edge/check.py holds the values below to the notifier's heartbeat.
#
# What an SSE stream needs from Cloudflare, and why:
# - idle timeout: Cloudflare's proxy read timeout, 100 s on every plan (changeable only on
#   Enterprise, below): a response quiet for longer is cut (the client sees the stream end, a
#   524 before the first byte). The notifier's heartbeat every SSE_HEARTBEAT_SECONDS (15 s) keeps
#   the stream from going quiet; 100 s is more than six heartbeats.
# - compression off for text/event-stream: a compressor holds bytes back until it has enough to
#   compress, which delays or swallows events and heartbeats. Cloudflare does not compress
#   text/event-stream by default; the rule below says so explicitly, so that a zone-wide rule
#   ("compress everything", Zstandard for all) cannot change it. With several matching
#   compression rules the last one wins: keep this one last.
# - buffering off: Cloudflare streams responses unless Response Buffering (Enterprise) is on.
# - caching: never. Status answers carry presigned URLs (Cache-Control: no-store) and per-tenant
#   data; streams are live. Cloudflare caches no JSON by default and honours no-store; the bypass
#   rule makes it hold for every path of the host whatever other rules or page rules say.
# - health: Cloudflare Load Balancing (an add-on) probes GET /readyz like the ALB.

variable "cloudflare_zone_id" {
  type = string
}

variable "cloudflare_account_id" {
  description = "For the load-balancing monitor."
  type        = string
}

variable "api_hostname" {
  description = "The API's host name, e.g. downloads.example.com (a proxied CNAME to alb_dns_name)."
  type        = string
}

variable "cloudflare_enterprise" {
  description = "Enterprise zones can set the proxy read timeout and response buffering explicitly."
  type        = bool
  default     = false
}

variable "cloudflare_load_balancing" {
  description = "Whether the zone has the Load Balancing add-on (for the /readyz monitor)."
  type        = bool
  default     = false
}

locals {
  # Cloudflare's proxy read timeout: fixed at 100 s below Enterprise (a Cloudflare limit, not a
  # setting); on Enterprise, cloudflare_zone_setting.proxy_read_timeout sets the same value.
  cloudflare_proxy_read_timeout_seconds = 100
}

resource "cloudflare_zone_setting" "proxy_read_timeout" {
  count      = var.cloudflare_enterprise ? 1 : 0
  zone_id    = var.cloudflare_zone_id
  setting_id = "proxy_read_timeout"
  value      = local.cloudflare_proxy_read_timeout_seconds
}

resource "cloudflare_zone_setting" "response_buffering" {
  count      = var.cloudflare_enterprise ? 1 : 0
  zone_id    = var.cloudflare_zone_id
  setting_id = "response_buffering"
  value      = "off"
}

resource "cloudflare_ruleset" "no_cache" {
  zone_id = var.cloudflare_zone_id
  name    = "download service: never cache the API"
  kind    = "zone"
  phase   = "http_request_cache_settings"
  rules = [
    {
      ref         = "download_api_bypass_cache"
      description = "API answers carry presigned URLs and tenant data (no-store); streams are live"
      expression  = "(http.host eq \"${var.api_hostname}\")"
      action      = "set_cache_settings"
      action_parameters = {
        cache = false
      }
      enabled = true
    }
  ]
}

resource "cloudflare_ruleset" "stream_compression" {
  zone_id = var.cloudflare_zone_id
  name    = "download service: SSE streams uncompressed"
  kind    = "zone"
  phase   = "http_response_compression"
  rules = [
    {
      ref         = "download_sse_no_compression"
      description = "text/event-stream passes byte for byte: every event and heartbeat at once"
      expression  = "(http.host eq \"${var.api_hostname}\" and http.response.content_type.media_type eq \"text/event-stream\")"
      action      = "compress_response"
      action_parameters = {
        algorithms = [{ name = "none" }]
      }
      enabled = true
    }
  ]
}

resource "cloudflare_load_balancer_monitor" "readyz" {
  count          = var.cloudflare_load_balancing ? 1 : 0
  account_id     = var.cloudflare_account_id
  description    = "download service: nginx and a ready intake"
  type           = "https"
  method         = "GET"
  path           = "/readyz"
  expected_codes = "200"
  interval       = 60
  timeout        = 5
  retries        = 2
  header = {
    Host = [var.api_hostname]
  }
}
