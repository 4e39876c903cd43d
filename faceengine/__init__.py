"""Django-free face engine shared by the server and the edge agent."""
