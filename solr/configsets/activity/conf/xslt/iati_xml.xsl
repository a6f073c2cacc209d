<?xml version="1.0" encoding="UTF-8"?>
<!-- Used by the /iati handler: the stored iati_xml strings (each one <iati-activity> element,
     no XML declaration) are written out unescaped inside an <iati-activities> root. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="xml" encoding="UTF-8" media-type="application/xml" indent="no"/>

  <xsl:template match="/">
    <iati-activities version="2.03">
      <xsl:for-each select="(/response/result/doc/date[@name='datetime'])[1]">
        <xsl:attribute name="generated-datetime"><xsl:value-of select="."/></xsl:attribute>
      </xsl:for-each>
      <xsl:text>&#10;</xsl:text>
      <xsl:for-each select="/response/result/doc/str[@name='iati_xml']">
        <xsl:value-of select="." disable-output-escaping="yes"/>
      </xsl:for-each>
    </iati-activities>
  </xsl:template>
</xsl:stylesheet>
