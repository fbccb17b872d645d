"""Figures drawn from aggregate tables (`plots`) and the report that writes them all (`report`)."""
