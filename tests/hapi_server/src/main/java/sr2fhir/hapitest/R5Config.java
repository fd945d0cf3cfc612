package sr2fhir.hapitest;

import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;

import ca.uhn.fhir.jpa.config.r5.JpaR5Config;

/** The R5 DAOs, resource providers and system provider. */
@Configuration
@Import(JpaR5Config.class)
public class R5Config {}
