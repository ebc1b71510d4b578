"""The protocol between agent and server: the wire format (`wire`) and the metric and event
vocabulary (`names`). Imports nothing of the agent, the server or torch; both sides import it."""
