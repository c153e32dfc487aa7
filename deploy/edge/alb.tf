# AWS Application Load Balancer in front of the VM's nginx (deploy/compose: nginx on HTTP_PORT).
# Terraform, AWS provider >= 5. Readable as it is; `terraform init` downloads the provider only
# when it is applied. deploy/edge/check.py holds the values below to the notifier's heartbeat.
#
# What an SSE stream needs from the ALB, and why:
# - idle_timeout: the ALB closes a connection on which no byte went either way for this long.
#   A progress stream is quiet between events except for the notifier's comment heartbeat every
#   SSE_HEARTBEAT_SECONDS (15 s), so the timeout must be well above it: at least twice (one late
#   or lost heartbeat is no reason to cut a stream). The default, 60 s, is four heartbeats; keep
#   it under nginx's keepalive_timeout (65 s in the official image) so that the ALB, never nginx,
#   closes an idle keep-alive connection first (AWS: a target closing first causes 502s).
# - buffering and compression: an ALB forwards response bytes as they come and never compresses,
#   so there is nothing to switch off; nginx and Cloudflare are where those settings live.
# - health: GET /readyz through nginx reaches an intake (nginx routes everything but the streams
#   to the intakes): 200 means nginx and at least one ready intake.
# - stickiness: off. Any notifier serves any job's stream (a resuming client's missed events
#   come back from JetStream), and the intakes share their state through NATS.

variable "name" {
  description = "Name prefix of the load balancer and its target group."
  type        = string
  default     = "downloads"
}

variable "vpc_id" {
  type = string
}

variable "public_subnet_ids" {
  description = "At least two subnets in different availability zones."
  type        = list(string)
}

variable "certificate_arn" {
  description = "ACM certificate of the API's host name."
  type        = string
}

variable "instance_id" {
  description = "The VM running deploy/compose."
  type        = string
}

variable "nginx_port" {
  description = "HTTP_PORT of deploy/compose/.env: nginx on the VM."
  type        = number
  default     = 8080
}

variable "allowed_ingress_cidrs" {
  description = "Who may reach the ALB: Cloudflare's IP ranges when Cloudflare proxies the host (then nobody can bypass it), else 0.0.0.0/0."
  type        = list(string)
}

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "HTTPS to the download service's ALB"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.allowed_ingress_cidrs
  }

  egress {
    description = "to nginx on the VM"
    from_port   = var.nginx_port
    to_port     = var.nginx_port
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_lb" "downloads" {
  name               = var.name
  load_balancer_type = "application"
  internal           = false
  security_groups    = [aws_security_group.alb.id]
  subnets            = var.public_subnet_ids

  # Seconds without a byte on a connection before the ALB closes it (1-4000, default 60): four
  # SSE heartbeats, and below nginx's keepalive_timeout (65 s). See the top of this file.
  idle_timeout = 60

  # How long a client connection may be reused at most (60-604800 s); an open stream is one
  # request, so this only ends keep-alive reuse, never a stream in progress.
  client_keep_alive = 3600

  enable_http2               = true
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"
  # nginx appends the ALB's address to X-Forwarded-For; the intake reads it from the right,
  # trusting TRUSTED_PROXIES (add the VPC's CIDR there).
  xff_header_processing_mode = "append"
  preserve_host_header       = true
  enable_deletion_protection = true
}

resource "aws_lb_target_group" "nginx" {
  name        = "${var.name}-nginx"
  port        = var.nginx_port
  protocol    = "HTTP"
  vpc_id      = var.vpc_id
  target_type = "instance"

  # In-flight requests are short (202 + polling); open streams on a deregistered target are cut
  # after this and resume elsewhere with Last-Event-ID.
  deregistration_delay = 30

  health_check {
    enabled             = true
    path                = "/readyz"
    port                = "traffic-port"
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  stickiness {
    type    = "lb_cookie"
    enabled = false
  }
}

resource "aws_lb_target_group_attachment" "vm" {
  target_group_arn = aws_lb_target_group.nginx.arn
  target_id        = var.instance_id
  port             = var.nginx_port
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.downloads.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.nginx.arn
  }
}

output "alb_dns_name" {
  description = "Point the API's host name here (a proxied CNAME when Cloudflare is in front)."
  value       = aws_lb.downloads.dns_name
}
