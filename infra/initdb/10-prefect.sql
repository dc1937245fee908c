-- Prefect keeps its own database beside the catalogue's.
CREATE DATABASE prefect OWNER linstudio;
