"""Mail: composing from jinja2 templates, and sending the outbox after commit."""
