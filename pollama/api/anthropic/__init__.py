"""Anthropic's Messages API (``/v1/messages``): wire types and routes."""
