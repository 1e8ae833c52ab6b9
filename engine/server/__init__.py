"""Ember as an OpenAI-compatible HTTP server (`ember-cli serve`): `ember_server.EmberServer` runs `app` over uvicorn."""
