"""Development and demo tooling (local servers, demo client): not part of the serving image."""
